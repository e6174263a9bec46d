#!/usr/bin/env node
// Entry point of a worker process (TypeScript sources run through tsx's loader).
require('tsx/cjs');
require('../src/main.ts');
