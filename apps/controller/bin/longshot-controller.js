#!/usr/bin/env node
// Entry point of a controller replica. Sources run through tsx; Nest's decorators need the
// repository's tsconfig (experimentalDecorators) whatever the working directory is.
const path = require('node:path');
process.env.TSX_TSCONFIG_PATH ??= path.resolve(__dirname, '../../../tsconfig.json');
require('tsx/cjs');
require('../src/main.ts').start();
