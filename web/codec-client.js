// The main thread's handle on the codec worker: each request a promise.

export class CodecWorker {
  constructor() {
    this.worker = new Worker(new URL("./codec-worker.js", import.meta.url), { type: "module" });
    this.pending = new Map();
    this.ids = 0;
    this.worker.onmessage = ({ data }) => {
      const { resolve, reject } = this.pending.get(data.id);
      this.pending.delete(data.id);
      data.error ? reject(new Error(data.error)) : resolve(data.result);
    };
    this.worker.onerror = (event) => console.error("codec worker:", event.message);
  }

  request(type, fields = {}, transfer = []) {
    const id = this.ids++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, type, ...fields }, transfer);
    });
  }
}
