import { Body, Controller, HttpCode, Inject, Post } from '@nestjs/common';
import { ApiBody, ApiConsumes, ApiOperation, ApiTags } from '@nestjs/swagger';
import { Identity, type Caller } from '../auth';
import { VideosService } from '../videos.service';
import { ApiAuthenticated, ApiError, ApiFailures, ApiJson, UPLOAD_SCHEMA } from './schemas';

/** Uploads that jobs reference by id, so no request ever names a file on the server. */
@ApiTags('videos')
@ApiFailures()
@ApiAuthenticated()
@Controller('v1/embeddings')
export class EmbeddingsController {
  constructor(@Inject(VideosService) private readonly videos: VideosService) {}

  @Post()
  @HttpCode(201)
  @ApiOperation({ summary: "Upload text embeddings (safetensors with 'cond' [n, textDim] and optional 'uncond'); submit with textEmbeddingsId" })
  @ApiConsumes('application/octet-stream')
  @ApiBody({ schema: { type: 'string', format: 'binary' } })
  @ApiJson(201, 'Stored: pass id as textEmbeddingsId', UPLOAD_SCHEMA)
  @ApiError(400, 'Not a safetensors file with a cond tensor (field: body)')
  @ApiError(413, 'Larger than LONGSHOT_MAX_UPLOAD_BYTES (field: body)')
  upload(@Body() body: unknown, @Identity() caller: Caller) {
    return this.videos.uploadEmbeddings(body, caller);
  }
}
