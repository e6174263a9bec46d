import { Body, Controller, HttpCode, Inject, Post } from '@nestjs/common';
import { ApiBody, ApiConsumes, ApiOperation, ApiResponse, ApiTags } from '@nestjs/swagger';
import { VideosService } from '../videos.service';

/** Uploads that jobs reference by id, so no request ever names a file on the server. */
@ApiTags('videos')
@Controller('v1/embeddings')
export class EmbeddingsController {
  constructor(@Inject(VideosService) private readonly videos: VideosService) {}

  @Post()
  @HttpCode(201)
  @ApiOperation({ summary: "Upload text embeddings (safetensors with 'cond' [n, textDim] and optional 'uncond'); submit with textEmbeddingsId" })
  @ApiConsumes('application/octet-stream')
  @ApiBody({ schema: { type: 'string', format: 'binary' } })
  @ApiResponse({ status: 201, description: '{id, bytes, tensors}: pass id as textEmbeddingsId' })
  @ApiResponse({ status: 400, description: 'Not a safetensors file with a cond tensor (field: body)' })
  @ApiResponse({ status: 413, description: 'Larger than LONGSHOT_MAX_UPLOAD_BYTES' })
  upload(@Body() body: unknown) {
    return this.videos.uploadEmbeddings(body);
  }
}
