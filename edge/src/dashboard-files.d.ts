// The dashboard's built files, embedded by build.mjs: name -> its ETag and its bytes in base64.
declare module "kiki:dashboard" {
  const files: Readonly<Record<string, { etag: string; body: string }>>;
  export default files;
}
