// The page: a model (the embedded export, or one the user picks), a source image, a driving video
// or the webcam; the animation drawn live, frames/s, and the result as a WebM download.
// Tests and scripts read the page through window.fomm (frames(), drivingFrames(), info()).
import { Engine, ExportError, bestBackend, describeBackend, fileList, readExport, urlFolder } from './engine.js';
import { InputError, openVideo, openWebcam, readImage } from './media.js';
import { KeypointSmoother, normalizeKp, takeFrames } from './keypoints.js';

const EMBEDDED = 'models/shapes-64/';
const SAMPLES = { source: 'samples/shapes-source.png', driving: 'samples/shapes-driving.mp4' };
const VIDEO_BATCH = 4; // driving frames per pass of the graphs
const KEEP_FRAMES = 3000; // frames kept for download and for window.fomm.frames() (video runs) ...
const KEEP_BYTES = 512e6; // ... at most this much memory, results and driving frames together
const KEEP_WEBCAM = 300; // the webcam's last frames kept

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

let ort = null;
let engine = null;
let source = null; // {file, rgba}
let driving = null; // a File
let run = null; // {stop: bool, kind: 'video'|'webcam', reference: bool}
let state = 'starting'; // starting | ready | running | done | error
let model = null; // {get, label}: where the loaded model came from (reloaded on another backend)
const result = { frames: [], driving: [], times: [], fps: 0, perFrameMs: 0, method: '', warnings: [] };

// ------------------------------------------------------------------------------- messages
function message(text, kind = 'error') {
  $('message').textContent = text || '';
  $('message').className = kind;
}

function status(text) {
  $('status').textContent = text;
}

function fail(e) {
  if (e instanceof InputError || e instanceof ExportError) {
    message(e.message);
  } else {
    console.error(e);
    message(`the page could not finish (${e && e.name ? e.name + ': ' : ''}${String((e && e.message) || e).split('\n')[0]})`);
  }
}

function enable() {
  const busy = run !== null;
  $('animate').disabled = busy || !engine || !source || !driving;
  $('webcam').disabled = busy || !engine || !source;
  $('reference').disabled = !(run && run.kind === 'webcam');
  $('stop').disabled = !busy;
  $('download').disabled = busy || !result.frames.length;
  for (const id of ['export-files', 'export-folder', 'embedded', 'backend-choice', 'source-input', 'driving-input', 'samples']) {
    $(id).disabled = busy;
  }
}

function draw(id, rgba) {
  const [h, w] = engine.shape;
  const c = $(id);
  if (c.width !== w || c.height !== h) Object.assign(c, { width: w, height: h });
  c.getContext('2d').putImageData(new ImageData(rgba, w, h), 0, 0);
}

// ---------------------------------------------------------------------------------- model
async function loadOrt() {
  try {
    ort = await import('./vendor/ort.min.mjs');
  } catch (e) {
    throw new ExportError('onnxruntime-web is not in web/vendor/: build the page first (make web)');
  }
  ort.env.wasm.wasmPaths = new URL('./vendor/', import.meta.url).href;
  // threads need SharedArrayBuffer, which only a cross-origin isolated page has; ?threads=N sets them
  const most = globalThis.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
  ort.env.wasm.numThreads = Math.min(most, Number(params.get('threads')) || most);
  if (params.get('log')) ort.env.logLevel = params.get('log'); // ?log=verbose: onnxruntime's own log in the console
}

async function loadModel(get, label) {
  state = 'starting';
  enable();
  message('');
  const choice = params.get('backend') || $('backend-choice').value;
  let backend = choice === 'auto' ? await bestBackend() : choice;
  const exported = await readExport(get, (text) => status(`${label}: ${text}`));
  let next;
  try {
    next = await Engine.create(ort, exported, backend, (text) => status(`${label}: ${text}`));
  } catch (e) {
    if (backend !== 'webgpu') throw e;
    message(`WebGPU could not run this model (${e.message}); running on WebAssembly`, 'info');
    backend = 'wasm';
    next = await Engine.create(ort, exported, backend, (text) => status(`${label}: ${text}`));
  }
  if (engine) await engine.release();
  engine = next;
  model = { get, label };
  Object.assign(result, { frames: [], driving: [], times: [] }); // frames of another model's size
  $('model-name').textContent = engine.name;
  $('backend').textContent = describeBackend(ort, backend);
  if (source) await setSource(source.file);
  state = 'ready';
  status(`ready: ${engine.name}`);
  enable();
}

async function guarded(work) {
  try {
    await work();
  } catch (e) {
    fail(e);
    if (state !== 'ready' && state !== 'done') state = engine ? 'ready' : 'error';
    status(engine ? `ready: ${engine.name}` : 'no model loaded');
  } finally {
    enable();
  }
}

// ---------------------------------------------------------------------------------- inputs
async function setSource(file) {
  const image = await readImage(file, engine.shape, $('fit').value);
  await engine.setSource(image.rgba);
  source = { file, rgba: image.rgba };
  draw('source-view', image.rgba);
}

async function fetchFile(url, type) {
  const res = await fetch(url);
  if (!res.ok) throw new InputError(`${url}: not found (make web copies the samples next to the page)`);
  return new File([await res.blob()], url.split('/').pop(), { type });
}

// ------------------------------------------------------------------------------- animating
function startRun(kind) {
  run = { stop: false, kind, reference: true };
  Object.assign(result, { frames: [], driving: [], times: [], fps: 0, perFrameMs: 0, warnings: [] });
  state = 'running';
  message('');
  enable();
  return run;
}

function keep(rgba, drivingRgba, time, most) {
  const limit = Math.min(most, Math.floor(KEEP_BYTES / (2 * rgba.length)));
  result.frames.push(rgba);
  result.driving.push(drivingRgba);
  result.times.push(time);
  if (result.frames.length > limit) {
    result.frames.shift();
    result.driving.shift();
    result.times.shift();
  }
}

function options() {
  const relative = $('relative').checked;
  return { relative, adaptScale: $('adapt-scale').checked, relativeJacobian: relative };
}

function showSpeed(frames, seconds, modelMs) {
  result.fps = frames / seconds;
  result.perFrameMs = modelMs;
  $('fps').textContent = `${result.fps.toFixed(1)} frames/s (model ${modelMs.toFixed(0)} ms per frame)`;
}

async function animateVideo() {
  const current = startRun('video');
  const video = await openVideo(driving, engine.shape, $('fit').value);
  result.method = video.method;
  const smoother = $('steady').checked ? new KeypointSmoother(video.fps || 25) : null;
  const opts = options();
  let initial = null, done = 0, modelMs = 0;
  const start = performance.now();
  status(`animating ${driving.name} (${video.method})`);
  const pass = async (batch) => {
    const t0 = performance.now();
    let kp = await engine.detect(batch.map((f) => f.rgba));
    if (smoother) kp = smoother.smooth(kp, 1 / (video.fps || 25));
    if (!initial) initial = takeFrames(kp, 0, 1);
    const frames = await engine.generate(normalizeKp(engine.source.kp, kp, initial, opts));
    modelMs += performance.now() - t0;
    frames.forEach((rgba, i) => keep(rgba, batch[i].rgba, batch[i].time, KEEP_FRAMES));
    draw('driving-view', batch[batch.length - 1].rgba);
    draw('result-view', frames[frames.length - 1]);
    done += batch.length;
    showSpeed(done, (performance.now() - start) / 1000, modelMs / done);
    status(`animating ${driving.name}: ${done}${video.count ? ' of ' + video.count : ''} frames (${video.method})`);
  };
  let batch = [];
  for await (const frame of video.frames()) {
    if (current.stop) break;
    batch.push(frame);
    if (batch.length === VIDEO_BATCH) {
      await pass(batch);
      batch = [];
    }
  }
  if (batch.length && !current.stop) await pass(batch);
  result.warnings = video.warnings.slice();
  if (result.warnings.length) message(result.warnings.join('; '), 'info');
  status(`${current.stop ? 'stopped' : 'done'}: ${done} frames in ${((performance.now() - start) / 1000).toFixed(1)} s (${video.method})`);
}

async function animateWebcam() {
  const current = startRun('webcam');
  const cam = await openWebcam(engine.shape);
  const smoother = $('steady').checked ? new KeypointSmoother(30) : null;
  const arrivals = [];
  let reference = null, last = null, done = 0, modelMs = 0;
  status('webcam: hold a neutral pose and press "Use this frame as reference" (the first frame is the reference)');
  try {
    while (!current.stop) {
      const now = performance.now();
      const rgba = cam.frame();
      const t0 = performance.now();
      let kp = await engine.detect([rgba]);
      if (current.reference && smoother) smoother.reset(); // a new reference starts the filter afresh
      if (smoother) kp = smoother.smooth(kp, last === null ? 1 / 30 : Math.max(now - last, 1) / 1000);
      if (current.reference || !reference) {
        reference = kp;
        current.reference = false;
      }
      const [out] = await engine.generate(normalizeKp(engine.source.kp, kp, reference, options()));
      modelMs += performance.now() - t0;
      done += 1;
      last = now;
      keep(out, rgba, now / 1000, KEEP_WEBCAM);
      draw('driving-view', rgba);
      draw('result-view', out);
      arrivals.push(performance.now());
      while (arrivals.length > 30) arrivals.shift();
      if (arrivals.length > 1) showSpeed(arrivals.length - 1, (arrivals[arrivals.length - 1] - arrivals[0]) / 1000, modelMs / done);
      await new Promise((resolve) => setTimeout(resolve, 0)); // let the page handle clicks
    }
  } finally {
    cam.stop();
  }
  status(`webcam stopped after ${done} frames`);
}

async function animate(kind) {
  try {
    await (kind === 'video' ? animateVideo() : animateWebcam());
    state = 'done';
  } catch (e) {
    state = 'ready';
    throw e;
  } finally {
    run = null;
    enable();
  }
}

// ------------------------------------------------------------------------------- download
async function download() {
  const [h, w] = engine.shape, scale = Math.max(1, Math.ceil(256 / Math.max(h, w)));
  const c = Object.assign(document.createElement('canvas'), { width: w * scale, height: h * scale });
  const ctx = c.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  const frame = Object.assign(document.createElement('canvas'), { width: w, height: h });
  const stream = c.captureStream(0);
  const track = stream.getVideoTracks()[0];
  const type = ['video/webm;codecs=vp9', 'video/webm;codecs=vp8', 'video/webm'].find((t) => MediaRecorder.isTypeSupported(t));
  const recorder = new MediaRecorder(stream, { mimeType: type, videoBitsPerSecond: 4e6 });
  const chunks = [];
  recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
  const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
  status('recording the result at its own frame rate…');
  recorder.start();
  const times = result.times, t0 = performance.now();
  const step = times.length > 1 ? (times[times.length - 1] - times[0]) / (times.length - 1) : 0.04;
  for (let i = 0; i < result.frames.length; i++) {
    const due = t0 + (times[i] - times[0]) * 1000;
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, due - performance.now())));
    frame.getContext('2d').putImageData(new ImageData(result.frames[i], w, h), 0, 0);
    ctx.drawImage(frame, 0, 0, c.width, c.height);
    track.requestFrame();
  }
  await new Promise((resolve) => setTimeout(resolve, step * 1000));
  recorder.stop();
  await stopped;
  const url = URL.createObjectURL(new Blob(chunks, { type: 'video/webm' }));
  const a = Object.assign(document.createElement('a'), { href: url, download: 'fomm-result.webm' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  status(`downloaded fomm-result.webm (${result.frames.length} frames)`);
}

// --------------------------------------------------------------------------- for scripts
function pngs(frames) {
  const [h, w] = engine.shape;
  const c = Object.assign(document.createElement('canvas'), { width: w, height: h });
  const ctx = c.getContext('2d');
  return frames.map((rgba) => {
    ctx.putImageData(new ImageData(rgba, w, h), 0, 0);
    return c.toDataURL('image/png');
  });
}

window.fomm = {
  /** The output frames of the last run, as PNG data URLs (one per frame; the webcam's last ones). */
  frames: async () => pngs(result.frames),
  /** The driving frames the model was given (after decoding and fitting), as PNG data URLs. */
  drivingFrames: async () => pngs(result.driving),
  info: () => ({ state, ready: !!engine && state !== 'starting', model: engine && engine.name, backend: $('backend').textContent,
    frameShape: engine && engine.shape, frames: result.frames.length, fps: result.fps, perFrameMs: result.perFrameMs,
    decoder: result.method, warnings: result.warnings, crossOriginIsolated: !!globalThis.crossOriginIsolated,
    message: $('message').textContent }),
};

// ---------------------------------------------------------------------------------- wiring
$('source-input').addEventListener('change', (e) => guarded(async () => {
  const file = e.target.files[0];
  if (!file) return;
  message('');
  try {
    await setSource(file);
  } catch (err) {
    e.target.value = '';
    throw err;
  }
  enable();
}));
$('driving-input').addEventListener('change', (e) => {
  driving = e.target.files[0] || null;
  message('');
  enable();
});
$('samples').addEventListener('click', () => guarded(async () => {
  driving = await fetchFile(SAMPLES.driving, 'video/mp4');
  await setSource(await fetchFile(SAMPLES.source, 'image/png'));
  status(`samples chosen: ${source.file.name} driven by ${driving.name}`);
}));
$('fit').addEventListener('change', () => source && guarded(() => setSource(source.file)));
$('animate').addEventListener('click', () => guarded(() => animate('video')));
$('webcam').addEventListener('click', () => guarded(() => animate('webcam')));
$('reference').addEventListener('click', () => { if (run) run.reference = true; });
$('stop').addEventListener('click', () => { if (run) run.stop = true; });
$('download').addEventListener('click', () => guarded(download));
$('export-files').addEventListener('change', (e) => e.target.files.length
  && guarded(() => loadModel(fileList(e.target.files), 'your export')));
$('export-folder').addEventListener('change', (e) => e.target.files.length
  && guarded(() => loadModel(fileList(e.target.files), 'your export folder')));
$('embedded').addEventListener('click', () => guarded(() => loadModel(urlFolder(EMBEDDED), 'embedded model')));
$('backend-choice').addEventListener('change', () => guarded(() => (model ? loadModel(model.get, model.label)
  : loadModel(urlFolder(EMBEDDED), 'embedded model'))));
if (params.get('backend')) $('backend-choice').value = params.get('backend');

// ?model=FOLDER/ starts with another export folder of the same site (a host serving several models)
const START = params.get('model') || EMBEDDED;
guarded(async () => {
  await loadOrt();
  await loadModel(urlFolder(START), START === EMBEDDED ? 'embedded model' : START);
});
