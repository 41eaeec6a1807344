// The builder loads .svg files as strings (asset/source); this tells TypeScript so.
declare module '*.svg' {
  const value: string;
  export default value;
}
