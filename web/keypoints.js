// Keypoint maths of the page: the same arithmetic as modules/keypoints.py (normalize_kp: relative
// motion, relative Jacobians, adapt scale by the convex hull area) and engine/smoothing.py (the
// One-Euro filter of "steady keypoints"), on plain typed arrays. No browser API: node runs this
// file in tests/test_web_maths.py against the Python functions.
//
// Keypoints of B frames: {value: Float64Array(B*K*2), jacobian: Float64Array(B*K*4) or null,
// batch: B, num: K}, row-major as the graphs' (B, K, 2) and (B, K, 2, 2) tensors.

export function keypoints(value, jacobian, batch, num) {
  return { value: Float64Array.from(value), jacobian: jacobian ? Float64Array.from(jacobian) : null, batch, num };
}

/** The frames [start, start + count) of a batch of keypoints. */
export function takeFrames(kp, start, count = 1) {
  const v = kp.num * 2, j = kp.num * 4;
  return {
    value: kp.value.slice(start * v, (start + count) * v),
    jacobian: kp.jacobian ? kp.jacobian.slice(start * j, (start + count) * j) : null,
    batch: count, num: kp.num,
  };
}

/** Area of the convex hull of points [[x, y], ...] (monotone chain + shoelace); 0 for fewer than
 * three distinct points or collinear ones. */
export function convexHullArea(points) {
  const seen = new Set();
  const pts = [];
  for (const [x, y] of points) {
    const key = x + ',' + y;
    if (!seen.has(key)) { seen.add(key); pts.push([x, y]); }
  }
  if (pts.length < 3) return 0;
  pts.sort((a, b) => (a[0] - b[0]) || (a[1] - b[1]));
  const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const half = (seq) => {
    const hull = [];
    for (const p of seq) {
      while (hull.length >= 2 && cross(hull[hull.length - 2], hull[hull.length - 1], p) <= 0) hull.pop();
      hull.push(p);
    }
    hull.pop();
    return hull;
  };
  const hull = half(pts).concat(half(pts.slice().reverse()));
  let twice = 0;
  for (let i = 0; i < hull.length; i++) {
    const [x0, y0] = hull[i], [x1, y1] = hull[(i + 1) % hull.length];
    twice += x0 * y1 - y0 * x1;
  }
  return 0.5 * Math.abs(twice);
}

function firstFramePoints(kp) {
  const out = [];
  for (let k = 0; k < kp.num; k++) out.push([kp.value[2 * k], kp.value[2 * k + 1]]);
  return out;
}

/** sqrt(area(source hull) / area(initial driving hull)) from the first frame of each; 1 for a
 * degenerate driving hull (adapt_movement_scale). */
export function movementScale(kpSource, kpInitial) {
  const source = convexHullArea(firstFramePoints(kpSource));
  const driving = convexHullArea(firstFramePoints(kpInitial));
  return driving > 0 ? Math.sqrt(source) / Math.sqrt(driving) : 1;
}

function matmul2(a, ai, b, bi, out, oi) {
  out[oi] = a[ai] * b[bi] + a[ai + 1] * b[bi + 2];
  out[oi + 1] = a[ai] * b[bi + 1] + a[ai + 1] * b[bi + 3];
  out[oi + 2] = a[ai + 2] * b[bi] + a[ai + 3] * b[bi + 2];
  out[oi + 3] = a[ai + 2] * b[bi + 1] + a[ai + 3] * b[bi + 3];
}

function inverse2(m, mi, out, oi) {
  const det = m[mi] * m[mi + 3] - m[mi + 1] * m[mi + 2];
  out[oi] = m[mi + 3] / det;
  out[oi + 1] = -m[mi + 1] / det;
  out[oi + 2] = -m[mi + 2] / det;
  out[oi + 3] = m[mi] / det;
}

/** normalize_kp of modules/keypoints.py (Sec. 3.5 of the paper): without relative motion the
 * driving keypoints as they are; with it the source keypoints moved by the driving keypoints'
 * displacement from the initial frame (times the hull-area scale with adaptScale) and, with
 * relativeJacobian, J = J_D J_D1^-1 J_S. kpSource and kpInitial hold one frame, kpDriving B. */
export function normalizeKp(kpSource, kpDriving, kpInitial, { adaptScale = false, relative = false,
  relativeJacobian = false } = {}) {
  const out = { value: Float64Array.from(kpDriving.value), jacobian: kpDriving.jacobian ? Float64Array.from(kpDriving.jacobian) : null,
    batch: kpDriving.batch, num: kpDriving.num };
  if (!relative) return out;
  const scale = adaptScale ? movementScale(kpSource, kpInitial) : 1;
  const K = kpDriving.num;
  for (let b = 0; b < kpDriving.batch; b++) {
    for (let i = 0; i < 2 * K; i++) {
      const at = b * 2 * K + i;
      out.value[at] = (kpDriving.value[at] - kpInitial.value[i]) * scale + kpSource.value[i];
    }
  }
  if (relativeJacobian && kpDriving.jacobian) {
    const inv = new Float64Array(4), diff = new Float64Array(4);
    for (let b = 0; b < kpDriving.batch; b++) {
      for (let k = 0; k < K; k++) {
        inverse2(kpInitial.jacobian, 4 * k, inv, 0);
        matmul2(kpDriving.jacobian, (b * K + k) * 4, inv, 0, diff, 0);
        matmul2(diff, 0, kpSource.jacobian, 4 * k, out.jacobian, (b * K + k) * 4);
      }
    }
  }
  return out;
}

// ------------------------------------------------------------------ steady keypoints (One-Euro)
// The constants of engine/smoothing.py (a test holds them equal).
export const DEFAULT_MIN_CUTOFF = 1.0; // Hz
export const DEFAULT_BETA = 20.0;
export const DEFAULT_D_CUTOFF = 1.0; // Hz

/** a(f) = 1 / (1 + 1 / (2 pi f dt)) for a cut-off f (Hz) and a period dt (s). */
export function smoothingFactor(cutoff, dt) {
  return 1 / (1 + 1 / (2 * Math.PI * cutoff * dt));
}

/** The One-Euro filter of one stream of equal-length arrays, every number filtered on its own:
 * the first sample passes unchanged; then the speed is low-passed at dCutoff, and the value at
 * minCutoff + beta |speed|. */
export class OneEuroFilter {
  constructor({ minCutoff = DEFAULT_MIN_CUTOFF, beta = DEFAULT_BETA, dCutoff = DEFAULT_D_CUTOFF } = {}) {
    if (!(minCutoff > 0) || !(dCutoff > 0) || !(beta >= 0)) {
      throw new RangeError(`smoothing: min_cutoff and d_cutoff must be > 0 and beta >= 0, got ${minCutoff}, ${dCutoff}, ${beta}`);
    }
    Object.assign(this, { minCutoff, beta, dCutoff });
    this.reset();
  }

  reset() {
    this.value = null;
    this.speed = null;
  }

  filter(x, dt) {
    if (!(dt > 0)) throw new RangeError(`smoothing: the time step must be > 0 seconds, got ${dt}`);
    if (this.value === null) {
      this.value = Float64Array.from(x);
      this.speed = new Float64Array(x.length);
      return Float64Array.from(x);
    }
    const aD = smoothingFactor(this.dCutoff, dt);
    for (let i = 0; i < x.length; i++) {
      const speed = (x[i] - this.value[i]) / dt;
      this.speed[i] = aD * speed + (1 - aD) * this.speed[i];
      const a = smoothingFactor(this.minCutoff + this.beta * Math.abs(this.speed[i]), dt);
      this.value[i] = a * x[i] + (1 - a) * this.value[i];
    }
    return Float64Array.from(this.value);
  }
}

/** One-Euro filters over keypoints (values and Jacobians), frame after frame along the batch,
 * continuing from the previous call; dt: seconds between frames (default 1 / fps). */
export class KeypointSmoother {
  constructor(fps = 25, options = {}) {
    if (!(fps > 0)) throw new RangeError(`smoothing: fps must be > 0, got ${fps}`);
    this.fps = fps;
    this.options = options;
    new OneEuroFilter(options); // checks the values now, not at the first frame
    this.reset();
  }

  reset() {
    this.filters = { value: new OneEuroFilter(this.options), jacobian: new OneEuroFilter(this.options) };
  }

  smooth(kp, dt = 1 / this.fps) {
    const out = { value: new Float64Array(kp.value.length), jacobian: kp.jacobian ? new Float64Array(kp.jacobian.length) : null,
      batch: kp.batch, num: kp.num };
    for (const key of ['value', 'jacobian']) {
      if (!kp[key]) continue;
      const n = kp[key].length / kp.batch;
      for (let b = 0; b < kp.batch; b++) {
        out[key].set(this.filters[key].filter(kp[key].subarray(b * n, (b + 1) * n), dt), b * n);
      }
    }
    return out;
  }
}
