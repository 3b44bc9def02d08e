// Images and videos to RGBA frames of the model's size, in the browser.
//
// Driving videos: MP4/MOV files with H.264 are demuxed here (mp4.js) and decoded by WebCodecs'
// VideoDecoder, every frame in presentation order (none skipped, none repeated, as PyAV decodes
// them for demo.py). A frame already of the model's size is converted from the decoder's Y'CbCr
// planes by colour.js (the formula FFmpeg's swscale uses); any other is scaled by the browser
// (drawImage). Other files (WebM, MKV, ...) play in a <video> element whose frames are taken as
// they are presented (requestVideoFrameCallback), with a warning when the browser skipped some.
import { Mp4Error, parseMp4 } from './mp4.js';
import { SUBSAMPLING, matrixName, yuvToRgba } from './colour.js';

export const IMAGE_EXTENSIONS = ['png', 'jpg', 'jpeg', 'bmp', 'webp', 'gif', 'avif'];

/** A bad input file: the message is one line naming it. */
export class InputError extends Error {
  name = 'InputError';
}

function canvas(width, height) {
  return typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(width, height)
    : Object.assign(document.createElement('canvas'), { width, height });
}

/** The part of a (width x height) picture that `fit` maps onto the model's (h x w) frame:
 * 'resize' stretches all of it (demo.py's default), 'crop' takes the largest centred region of
 * the frame's aspect ratio. */
export function fitRegion(width, height, [h, w], fit) {
  if (fit !== 'crop') return [0, 0, width, height];
  const scale = Math.min(width / w, height / h);
  const cw = Math.round(w * scale), ch = Math.round(h * scale);
  return [Math.floor((width - cw) / 2), Math.floor((height - ch) / 2), cw, ch];
}

/** Draw any drawable (image, bitmap, video, VideoFrame) fitted to the model's size -> RGBA;
 * rotation: degrees counter-clockwise that turn the picture upright (a video's display matrix). */
export function drawFitted(source, width, height, shape, fit, rotation = 0) {
  const [h, w] = shape;
  const turned = rotation % 180 !== 0;
  const [x, y, cw, ch] = fitRegion(turned ? height : width, turned ? width : height, shape, fit);
  const c = canvas(w, h);
  const ctx = c.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  if (rotation) {
    // draw the upright picture: rotate about the canvas centre, then place the region's source
    const full = canvas(turned ? height : width, turned ? width : height);
    const fctx = full.getContext('2d');
    fctx.translate(full.width / 2, full.height / 2);
    fctx.rotate((-rotation * Math.PI) / 180); // the canvas turns clockwise for positive angles
    fctx.drawImage(source, -width / 2, -height / 2);
    ctx.drawImage(full, x, y, cw, ch, 0, 0, w, h);
  } else {
    ctx.drawImage(source, x, y, cw, ch, 0, 0, w, h);
  }
  return ctx.getImageData(0, 0, w, h).data;
}

// --------------------------------------------------------------------------------- images
/** An image file -> {rgba of the model's size, width, height (as decoded)}. */
export async function readImage(file, shape, fit) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: 'from-image', premultiplyAlpha: 'none',
      colorSpaceConversion: 'none' });
  } catch (e) {
    throw new InputError(`source image: ${file.name}: not an image file, or a format that cannot be read (expected ${IMAGE_EXTENSIONS.join('/')})`);
  }
  try {
    return { rgba: drawFitted(bitmap, bitmap.width, bitmap.height, shape, fit), width: bitmap.width, height: bitmap.height };
  } finally {
    bitmap.close();
  }
}

// --------------------------------------------------------------------------------- videos
async function exactRgba(frame, colour) {
  // the decoder's planes, converted as swscale converts them (no scaling)
  const rect = frame.visibleRect;
  const data = new Uint8Array(frame.allocationSize({ rect }));
  const layout = await frame.copyTo(data, { rect });
  const [sx, sy] = SUBSAMPLING[frame.format];
  const planes = frame.format === 'NV12'
    ? { y: data.subarray(layout[0].offset), yStride: layout[0].stride, uv: data.subarray(layout[1].offset), uvStride: layout[1].stride }
    : { y: data.subarray(layout[0].offset), yStride: layout[0].stride, u: data.subarray(layout[1].offset), uStride: layout[1].stride,
      v: data.subarray(layout[2].offset), vStride: layout[2].stride };
  return yuvToRgba(planes, rect.width, rect.height, { matrix: matrixName(colour.matrix), fullRange: colour.fullRange, sx, sy });
}

/** A decoded VideoFrame -> RGBA of the model's size; colour: the stream's tags {matrix (H.273
 * code or null), fullRange} (mp4.js). */
export async function frameRgba(frame, shape, fit, colour, rotation = 0) {
  const [h, w] = shape;
  if (!rotation && frame.visibleRect.width === w && frame.visibleRect.height === h && SUBSAMPLING[frame.format]) {
    return exactRgba(frame, colour);
  }
  return drawFitted(frame, frame.displayWidth, frame.displayHeight, shape, fit, rotation);
}

/** A driving video file -> {method, fps, count (null when unknown), warnings: [], frames(): an
 * async iterator of {rgba, time (s)}}. */
export async function openVideo(file, shape, fit) {
  const bytes = await file.arrayBuffer();
  let track = null, why = '';
  try {
    track = parseMp4(bytes);
  } catch (e) {
    if (!(e instanceof Mp4Error)) throw e;
    why = e.message;
  }
  if (track && typeof VideoDecoder !== 'undefined') {
    const config = { codec: track.codec, description: track.description, codedWidth: track.width, codedHeight: track.height,
      hardwareAcceleration: 'prefer-software' };
    const support = await VideoDecoder.isConfigSupported(config).catch(() => ({ supported: false }));
    if (support.supported) return webCodecsVideo(file, bytes, track, config, shape, fit);
    why = `this browser's VideoDecoder does not take ${track.codec}`;
  } else if (track) {
    why = 'this browser has no WebCodecs';
  }
  return elementVideo(file, shape, fit, why);
}

function webCodecsVideo(file, bytes, track, config, shape, fit) {
  const wanted = new Map(track.frames.map((f, i) => [f.cts, i])); // presentation timestamps kept by the edit list
  return {
    method: 'WebCodecs (every frame, in order)', fps: track.fps, count: track.frames.length, warnings: [],
    async* frames() {
      const ready = [];
      let failure = null, wake = null;
      const signal = () => { if (wake) { wake(); wake = null; } };
      const decoder = new VideoDecoder({
        output: (frame) => { ready.push(frame); signal(); },
        error: (e) => { failure = e; signal(); },
      });
      decoder.addEventListener('dequeue', signal);
      decoder.configure(config);
      const data = new Uint8Array(bytes);
      let next = 0, flushed = null, done = false, emitted = 0;
      try {
        while (true) {
          // keep a few chunks in flight; the decoder holds frames back for reordering
          while (next < track.samples.length && ready.length < 4 && decoder.decodeQueueSize < 4) {
            const s = track.samples[next++];
            decoder.decode(new EncodedVideoChunk({ type: s.key ? 'key' : 'delta', timestamp: s.cts, duration: s.duration,
              data: data.subarray(s.offset, s.offset + s.size) }));
          }
          if (next === track.samples.length && !flushed) {
            flushed = decoder.flush().then(() => { done = true; signal(); }, (e) => { failure = failure || e; signal(); });
          }
          if (failure) throw new InputError(`driving video: ${file.name}: cannot be decoded (${failure.message})`);
          if (ready.length) {
            const frame = ready.shift();
            try {
              if (wanted.has(frame.timestamp)) {
                const rgba = await frameRgba(frame, shape, fit, track.colour, track.rotation);
                emitted++;
                yield { rgba, time: track.frames[wanted.get(frame.timestamp)].time };
              }
            } finally {
              frame.close();
            }
            continue;
          }
          if (done) break;
          await new Promise((resolve) => { wake = resolve; });
        }
        if (emitted < track.frames.length) {
          throw new InputError(`driving video: ${file.name}: ${emitted} of its ${track.frames.length} frames could be decoded (damaged?)`);
        }
      } finally {
        ready.forEach((f) => f.close());
        if (decoder.state !== 'closed') decoder.close();
      }
    },
  };
}

async function elementVideo(file, shape, fit, why) {
  const url = URL.createObjectURL(file);
  const video = document.createElement('video');
  Object.assign(video, { muted: true, playsInline: true, preload: 'auto', src: url });
  try {
    await new Promise((resolve, reject) => {
      video.onloadedmetadata = resolve;
      video.onerror = () => reject(new Error('error'));
    });
  } catch (e) {
    URL.revokeObjectURL(url);
    throw new InputError(`driving video: ${file.name}: not a video this browser can decode`);
  }
  const warnings = [];
  if (why) warnings.push(`decoded by a <video> element (${why}): frames the browser skips while playing are missing`);
  return {
    method: '<video> element (frames as presented)', fps: null, count: null, warnings,
    async* frames() {
      // one frame at a time: the video pauses as each frame is presented and plays again when the
      // next one is wanted, at a quarter of its speed, so that a busy page misses as few frames as it can
      let lastTime = -1, step = Infinity, skipped = 0, ended = false;
      video.playbackRate = 0.25;
      const next = () => new Promise((resolve) => {
        const done = () => { ended = true; resolve(null); };
        video.onended = done;
        video.requestVideoFrameCallback((now, meta) => {
          video.pause();
          video.onended = null;
          resolve({ rgba: drawFitted(video, video.videoWidth, video.videoHeight, shape, fit), time: meta.mediaTime });
        });
        if (video.ended) done();
        else video.play().catch(done);
      });
      try {
        if (video.readyState < 2) await new Promise((resolve) => { video.onloadeddata = resolve; });
        // the first frame is on show before playing starts: no frame callback comes for it
        let first = { rgba: drawFitted(video, video.videoWidth, video.videoHeight, shape, fit), time: video.currentTime };
        while (!ended) {
          const frame = first || await next();
          first = null;
          if (!frame) break;
          if (lastTime >= 0) {
            const gap = frame.time - lastTime;
            if (gap > 0) step = Math.min(step, gap);
            if (gap > 1.5 * step) skipped += Math.round(gap / step) - 1;
          }
          lastTime = frame.time;
          yield frame;
        }
        if (skipped) warnings.push(`${skipped} frame(s) of ${file.name} were skipped by the browser's player (convert it to MP4/H.264 for every frame)`);
        this.fps = Number.isFinite(step) ? 1 / step : null;
      } finally {
        video.pause();
        video.removeAttribute('src');
        URL.revokeObjectURL(url);
      }
    },
  };
}

// --------------------------------------------------------------------------------- webcam
/** The webcam in a (hidden) <video> element; frame() -> RGBA of the model's size (centre crop). */
export async function openWebcam(shape) {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  } catch (e) {
    throw new InputError(`webcam: ${e.name === 'NotAllowedError' ? 'access was refused' : (e.message || e.name)}`);
  }
  const video = document.createElement('video');
  Object.assign(video, { muted: true, playsInline: true, srcObject: stream });
  await video.play();
  return {
    video,
    frame: () => drawFitted(video, video.videoWidth, video.videoHeight, shape, 'crop'),
    stop: () => stream.getTracks().forEach((t) => t.stop()),
  };
}
