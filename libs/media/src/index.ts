export * from './mp4';
export * from './stitcher';
