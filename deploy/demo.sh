#!/usr/bin/env bash
# `npm run demo`: set up what is missing, render one prompt with the model trained here
# (longshot-shapes, libs/model/pipelines) on an embedded cluster with two pipeline stages, then
# say what the video shows and whether it is what the prompt asked for (apps/trainer/src/describe.ts).
# Extra arguments go to `longshot render` (e.g. --seed 3, --stages 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/bootstrap.sh
# A combination the DiT never saw in training (red circles never move left there: grammar.json's held-out rule).
prompt='a big red circle moving left on a blue background'
out=out/demo.mp4
node apps/cli/bin/longshot.js render --model longshot-shapes --size 64x64 --prompt "$prompt" --stages 2 --out "$out" "$@"
node --import tsx apps/trainer/src/describe.ts "$out" --prompt "$prompt"
