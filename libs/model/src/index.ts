export * from './config';
export * from './stage';
export * from './weights-types';
export * from './safetensors';
export * from './weights';
export * from './text';
export * from './decoder';
export * from './source';
