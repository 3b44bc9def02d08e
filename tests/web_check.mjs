// Runs the page's pure modules (web/*.js) for tests/test_web_maths.py: reads {jobs: [{op, ...}]}
// as JSON on stdin, writes [result, ...] as JSON on stdout.
import { readFileSync } from 'node:fs';
import * as kp from '../web/keypoints.js';
import { parseMp4 } from '../web/mp4.js';
import { sha256Hex, sha256Plain } from '../web/sha256.js';
import { yuvToRgba } from '../web/colour.js';

const hexBytes = (hex) => Uint8Array.from(hex.match(/../g) || [], (b) => parseInt(b, 16));
const typed = (k) => kp.keypoints(k.value, k.jacobian, k.batch, k.num);
const plain = (k) => ({ value: Array.from(k.value), jacobian: k.jacobian ? Array.from(k.jacobian) : null });

const ops = {
  normalize: ({ source, driving, initial, options }) => plain(kp.normalizeKp(typed(source), typed(driving), typed(initial), options)),
  hull: ({ points }) => kp.convexHullArea(points),
  defaults: () => ({ min_cutoff: kp.DEFAULT_MIN_CUTOFF, beta: kp.DEFAULT_BETA, d_cutoff: kp.DEFAULT_D_CUTOFF }),
  smooth: ({ fps, calls }) => {
    // calls: [{kp: {value, jacobian, batch, num}, dt (null: 1 / fps)}], one smoother throughout
    const smoother = new kp.KeypointSmoother(fps);
    return calls.map((c) => plain(smoother.smooth(typed(c.kp), c.dt === null ? undefined : c.dt)));
  },
  sha256: async ({ hex }) => {
    const bytes = hexBytes(hex);
    return { plain: Buffer.from(sha256Plain(bytes)).toString('hex'), page: await sha256Hex(bytes) };
  },
  yuv: ({ planes, width, height, options }) => {
    const p = {};
    for (const [k, v] of Object.entries(planes)) p[k] = typeof v === 'string' ? hexBytes(v) : v;
    return Buffer.from(yuvToRgba(p, width, height, options)).toString('hex');
  },
  mp4: ({ path }) => {
    const file = readFileSync(path);
    const t = parseMp4(file.buffer.slice(file.byteOffset, file.byteOffset + file.length));
    return { codec: t.codec, width: t.width, height: t.height, fps: t.fps, rotation: t.rotation, colour: t.colour,
      samples: t.samples.map((s) => [s.offset, s.size, s.key]), times: t.frames.map((f) => f.time) };
  },
  mp4error: ({ path }) => {
    const file = readFileSync(path);
    try {
      parseMp4(file.buffer.slice(file.byteOffset, file.byteOffset + file.length));
      return null;
    } catch (e) {
      return `${e.name}: ${e.message}`;
    }
  },
};

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', async () => {
  const { jobs } = JSON.parse(input);
  const results = [];
  for (const job of jobs) results.push(await ops[job.op](job));
  process.stdout.write(JSON.stringify(results));
});
