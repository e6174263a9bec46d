#!/usr/bin/env bash
# Regenerates the TypeScript bindings of proto/longshot/v1/*.proto with protoc + ts-proto.
#
#   bash proto/generate.sh            # into libs/transport/src/gen (committed)
#   bash proto/generate.sh OUT_DIR    # anywhere else (the staleness test uses a temp dir)
#
# Output is a pure function of the .proto files and the pinned ts-proto version: the version
# banner and protoc version are suppressed and files are passed in sorted order, so a diff
# against the committed tree means the contract changed and this script was not run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/libs/transport/src/gen}"
plugin="$root/node_modules/.bin/protoc-gen-ts_proto"

if ! command -v protoc >/dev/null 2>&1; then
  echo "generate.sh: protoc not found (Debian: apt-get install protobuf-compiler)" >&2
  exit 1
fi
if [ ! -x "$plugin" ]; then
  echo "generate.sh: $plugin missing; run npm install at the repository root" >&2
  exit 1
fi

mkdir -p "$out"
# Stale files of a removed .proto must not survive a regeneration.
find "$out" -name '*.ts' -type f -delete

cd "$root/proto"
mapfile -t protos < <(find longshot -name '*.proto' -type f | LC_ALL=C sort)

# outputServices=grpc-js: service definitions and typed clients for @grpc/grpc-js.
# oneof=unions-value: `frame: {$case: 'header', value: ...}` discriminated unions that narrow.
# forceLong=number: seq/offset/byte_length are far below 2^53; plain numbers avoid Long.
# useOptionals=none + initializeFieldsAsUndefined=false: proto3 semantics, every field present.
# useExactTypes=false: Message.create()/fromPartial() accept plain object literals.
# annotateFilesWithVersion=false: the banner would otherwise name the local protoc version, and
# a different Debian protoc would make identical code look stale.
# esModuleInterop=true matches tsconfig; importSuffix stays empty for CommonJS resolution.
protoc \
  --plugin="protoc-gen-ts_proto=$plugin" \
  --ts_proto_out="$out" \
  --ts_proto_opt=outputServices=grpc-js \
  --ts_proto_opt=env=node \
  --ts_proto_opt=esModuleInterop=true \
  --ts_proto_opt=forceLong=number \
  --ts_proto_opt=useOptionals=none \
  --ts_proto_opt=oneof=unions-value \
  --ts_proto_opt=useExactTypes=false \
  --ts_proto_opt=outputTypeRegistry=false \
  --ts_proto_opt=addGrpcMetadata=false \
  --ts_proto_opt=useDate=false \
  --ts_proto_opt=annotateFilesWithVersion=false \
  --ts_proto_opt=unrecognizedEnum=false \
  "${protos[@]}"
