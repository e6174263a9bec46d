#!/usr/bin/env node
// Entry point of the `longshot` command: TypeScript sources run through tsx's loader, so the
// repository needs no separate compile step.
require('tsx/cjs');
require('../src/main.ts');
