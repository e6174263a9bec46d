export * from './schedule';
export * from './partition';
export * from './spec';
export * from './cost';
export * from './checkpoint';
export * from './links';
