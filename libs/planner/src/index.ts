export * from './schedule';
export * from './partition';
export * from './spec';
export * from './cost';
export * from './layout';
export * from './checkpoint';
export * from './links';
