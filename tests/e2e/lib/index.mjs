export * from './http.mjs';
export * from './html.mjs';
export * from './flow.mjs';
export * from './proc.mjs';
export * from './proxy.mjs';
export * from './chromium.mjs';
