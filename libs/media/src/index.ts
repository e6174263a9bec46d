export * from './mp4';
export * from './stitcher';
export * from './segments';
