export * from './noise';
export * from './queue';
export * from './local';
export * from './emulation';
export * from './driver';
export * from './leased-workers';
export * from './decode';
export * from './placement';
