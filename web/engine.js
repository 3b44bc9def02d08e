// The three graphs of an export (export.py) run by onnxruntime-web: the manifest checked as
// engine/onnx_engine.py checks it (format, entries, frame size; every graph present with the
// manifest's sha256), one session per graph, the source computed once, driving frames in batches.
import { sha256Hex } from './sha256.js';

export const FORMAT_VERSION = 1; // engine/onnx_engine.py FORMAT_VERSION
export const MANIFEST = 'manifest.json';
export const GRAPHS = ['kp_detector', 'source', 'generator'];

/** A bad export: the message is one line naming the file. */
export class ExportError extends Error {
  name = 'ExportError';
}

/** The manifest's fields checked (ExportError names what is wrong). */
export function checkManifest(manifest) {
  if (!manifest || typeof manifest !== 'object' || manifest.format !== FORMAT_VERSION) {
    throw new ExportError(`${MANIFEST}: not a manifest of format ${FORMAT_VERSION} (export again with this version of export.py)`);
  }
  const graphs = manifest.graphs, shape = manifest.frame_shape;
  if (!graphs || typeof graphs !== 'object' || GRAPHS.some((g) => !graphs[g] || typeof graphs[g] !== 'object')) {
    throw new ExportError(`${MANIFEST}: graphs: expected the entries ${GRAPHS.join(', ')}`);
  }
  if (!(Array.isArray(shape) && shape.length === 2 && shape.every((v) => Number.isInteger(v) && v > 0))) {
    throw new ExportError(`${MANIFEST}: frame_shape: expected [height, width], got ${JSON.stringify(shape)}`);
  }
  for (const role of GRAPHS) {
    const e = graphs[role];
    if (typeof e.file !== 'string' || typeof e.sha256 !== 'string' || !Array.isArray(e.inputs) || !Array.isArray(e.outputs)) {
      throw new ExportError(`${MANIFEST}: graphs.${role}: expected file, sha256, inputs and outputs`);
    }
    if (e.file.includes('/') || e.file.includes('\\') || e.file === '..' || e.file === '.') {
      throw new ExportError(`${MANIFEST}: graphs.${role}.file: ${JSON.stringify(e.file)} is not a file name in the folder`);
    }
  }
  return manifest;
}

/** Files of an export from a folder URL: name -> ArrayBuffer, or null when the server has none. */
export function urlFolder(base) {
  const root = new URL(base.endsWith('/') ? base : base + '/', document.baseURI);
  return async (name) => {
    const res = await fetch(new URL(name, root));
    if (res.status === 404) return null;
    if (!res.ok) throw new ExportError(`${name}: the server answered ${res.status} ${res.statusText}`);
    return res.arrayBuffer();
  };
}

/** Files of an export chosen by the user (a file list or a folder): name -> ArrayBuffer or null. */
export function fileList(files) {
  const byName = new Map();
  for (const f of files) byName.set(f.name, f);
  return async (name) => (byName.has(name) ? byName.get(name).arrayBuffer() : null);
}

/** {manifest, graphs: {role: ArrayBuffer}} of an export, checked: the manifest, each graph
 * present, each checksum. `progress(text)` hears what is being read. */
export async function readExport(get, progress = () => {}) {
  progress(`reading ${MANIFEST}`);
  const raw = await get(MANIFEST);
  if (raw === null) throw new ExportError(`${MANIFEST}: missing (an export folder holds it with the graphs)`);
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(raw));
  } catch (e) {
    throw new ExportError(`${MANIFEST}: unreadable manifest (${e.message})`);
  }
  checkManifest(manifest);
  const graphs = {};
  for (const role of GRAPHS) {
    const entry = manifest.graphs[role];
    progress(`reading ${entry.file}`);
    const data = await get(entry.file);
    if (data === null) throw new ExportError(`${entry.file}: missing (listed in ${MANIFEST} as the ${role} graph)`);
    if ((await sha256Hex(data)) !== entry.sha256) {
      throw new ExportError(`${entry.file}: checksum mismatch with ${MANIFEST} (the file changed after export: export again)`);
    }
    graphs[role] = data;
  }
  return { manifest, graphs };
}

/** What the page runs on by default: 'webgpu' where the browser offers a GPU adapter, else
 * 'wasm'. A fallback adapter (a GPU emulated on the CPU, e.g. SwiftShader) is not taken: the
 * graphs ran 60x slower on it than on WebAssembly (docs/benchmarks.md). */
export async function bestBackend() {
  try {
    const adapter = globalThis.navigator && navigator.gpu && (await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' }));
    if (adapter && !(adapter.info && adapter.info.isFallbackAdapter)) return 'webgpu';
  } catch (e) { /* no adapter */ }
  return 'wasm';
}

/** Words for the backend a model runs on. */
export function describeBackend(ort, backend) {
  if (backend === 'webgpu') return 'WebGPU (operators it lacks run on WebAssembly)';
  const threads = ort.env.wasm.numThreads;
  return `WebAssembly, SIMD, ${threads} thread${threads === 1 ? '' : 's'}` + (globalThis.crossOriginIsolated
    ? ' (cross-origin isolated)' : ' (not cross-origin isolated: serve with the COOP/COEP headers for threads)');
}

function tensorBatch(ort, frames, shape) {
  // RGBA frames (Uint8ClampedArray, H * W * 4) -> float32 (B, 3, H, W) in [0, 1], as stack_frames
  const [h, w] = shape, plane = h * w;
  const data = new Float32Array(frames.length * 3 * plane);
  frames.forEach((rgba, b) => {
    const base = b * 3 * plane;
    for (let i = 0; i < plane; i++) {
      data[base + i] = rgba[4 * i] / 255;
      data[base + plane + i] = rgba[4 * i + 1] / 255;
      data[base + 2 * plane + i] = rgba[4 * i + 2] / 255;
    }
  });
  return new ort.Tensor('float32', data, [frames.length, 3, h, w]);
}

/** uint8 as images.float_to_uint8: clip to [0, 1], times 255 in float32, round half to even. */
function toByte(x) {
  const v = Math.fround((x <= 0 ? 0 : x >= 1 ? 1 : x) * 255);
  let r = Math.round(v);
  if (r - v === 0.5 && (r & 1)) r -= 1;
  return r;
}

export class Engine {
  constructor(ort, manifest, sessions, backend) {
    Object.assign(this, { ort, manifest, sessions, backend });
    this.shape = manifest.frame_shape;
    this.source = null;
  }

  /** Sessions of the checked graphs on `backend` ('webgpu' or 'wasm'). */
  static async create(ort, { manifest, graphs }, backend, progress = () => {}) {
    const sessions = {};
    const providers = backend === 'webgpu' ? ['webgpu', 'wasm'] : ['wasm'];
    for (const role of GRAPHS) {
      const entry = manifest.graphs[role];
      progress(`loading ${entry.file} (${backend})`);
      let session;
      try {
        session = await ort.InferenceSession.create(new Uint8Array(graphs[role]), {
          executionProviders: providers, graphOptimizationLevel: 'all',
        });
      } catch (e) {
        throw new ExportError(`${entry.file}: onnxruntime-web cannot load it (${String(e.message || e).split('\n')[0]})`);
      }
      const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
      if (!same(session.inputNames, entry.inputs) || !same(session.outputNames, entry.outputs)) {
        throw new ExportError(`${entry.file}: its inputs/outputs ${session.inputNames} -> ${session.outputNames} are not those of ${MANIFEST} (${entry.inputs} -> ${entry.outputs})`);
      }
      sessions[role] = session;
    }
    return new Engine(ort, manifest, sessions, backend);
  }

  get name() {
    const m = this.manifest;
    return `${m.checkpoint || 'export'} (${this.shape[1]}x${this.shape[0]}, ${m.num_kp} keypoints, ${m.precision || 'fp32'})`;
  }

  /** Keypoints of B frames (RGBA arrays of the export's size): {value, jacobian, batch, num}. */
  async detect(frames) {
    const names = this.manifest.graphs.kp_detector;
    const out = await this.sessions.kp_detector.run({ [names.inputs[0]]: tensorBatch(this.ort, frames, this.shape) });
    const value = out[names.outputs[0]], jacobian = names.outputs.length > 1 ? out[names.outputs[1]] : null;
    return { value: Float64Array.from(value.data), jacobian: jacobian ? Float64Array.from(jacobian.data) : null,
      batch: frames.length, num: value.dims[1] };
  }

  /** The source's keypoints and encoding, computed once. */
  async setSource(rgba) {
    const source = tensorBatch(this.ort, [rgba], this.shape);
    const kp = await this.detect([rgba]);
    const names = this.manifest.graphs.source;
    const encoded = (await this.sessions.source.run({ [names.inputs[0]]: source }))[names.outputs[0]];
    this.source = { tensor: source, encoded, kp };
    return kp;
  }

  /** The generator on the cached source for B normalised driving keypoints -> B RGBA frames. */
  async generate(kpNorm) {
    const { ort } = this, K = kpNorm.num, B = kpNorm.batch, src = this.source;
    const feeds = { encoded: src.encoded, source: src.tensor,
      kp_source_value: new ort.Tensor('float32', Float32Array.from(src.kp.value), [1, K, 2]),
      kp_driving_value: new ort.Tensor('float32', Float32Array.from(kpNorm.value), [B, K, 2]) };
    if (src.kp.jacobian) {
      feeds.kp_source_jacobian = new ort.Tensor('float32', Float32Array.from(src.kp.jacobian), [1, K, 2, 2]);
      feeds.kp_driving_jacobian = new ort.Tensor('float32', Float32Array.from(kpNorm.jacobian), [B, K, 2, 2]);
    }
    const inputs = this.manifest.graphs.generator.inputs;
    const out = await this.sessions.generator.run(Object.fromEntries(inputs.map((n) => [n, feeds[n]])), ['prediction']);
    const pred = out.prediction.data, [h, w] = this.shape, plane = h * w;
    const frames = [];
    for (let b = 0; b < B; b++) {
      const rgba = new Uint8ClampedArray(plane * 4), base = b * 3 * plane;
      for (let i = 0; i < plane; i++) {
        rgba[4 * i] = toByte(pred[base + i]);
        rgba[4 * i + 1] = toByte(pred[base + plane + i]);
        rgba[4 * i + 2] = toByte(pred[base + 2 * plane + i]);
        rgba[4 * i + 3] = 255;
      }
      frames.push(rgba);
    }
    return frames;
  }

  async release() {
    for (const s of Object.values(this.sessions)) await s.release();
  }
}
