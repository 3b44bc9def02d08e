// Decoded video planes (Y'CbCr) to RGB, as FFmpeg's swscale converts them for PyAV (the decoder
// of demo.py): the matrix the stream is tagged with (BT.709, BT.2020, else BT.601), limited range
// unless tagged full, and each chroma sample used for the whole block it covers (swscale's
// unscaled converter upsamples 4:2:0 chroma by repetition). The arithmetic here is exact
// (float64, rounded once); swscale's fixed-point tables round each term on its own, so the two
// differ by a few levels at most (tests/test_web_page.py measures it). No browser API.

const MATRICES = { bt601: [0.299, 0.114], bt709: [0.2126, 0.0722], bt2020: [0.2627, 0.0593] }; // [Kr, Kb]

/** The matrix for a stream's matrix_coefficients tag (ITU-T H.273; null: untagged), as FFmpeg
 * picks it: BT.709 (1), BT.2020 (9, 10), else BT.601. */
export function matrixName(code) {
  if (code === 1) return 'bt709';
  if (code === 9 || code === 10) return 'bt2020';
  return 'bt601';
}

/** The coefficients {y, rv, gu, gv, bu, yOffset} of R = y (Y - yOffset) + rv (V - 128), G = ...,
 * B = ... for a matrix name and range. */
export function coefficients(matrix = 'bt601', fullRange = false) {
  const [kr, kb] = MATRICES[matrix] || MATRICES.bt601;
  const kg = 1 - kr - kb;
  const y = fullRange ? 1 : 255 / 219, c = fullRange ? 1 : 255 / 224;
  return {
    y, yOffset: fullRange ? 0 : 16,
    rv: 2 * (1 - kr) * c, bu: 2 * (1 - kb) * c,
    gu: -2 * kb * (1 - kb) / kg * c, gv: -2 * kr * (1 - kr) / kg * c,
  };
}

function clamp8(x) {
  return x <= 0 ? 0 : x >= 255 ? 255 : Math.round(x);
}

/** Planes -> RGBA (Uint8ClampedArray, width * height * 4, alpha 255).
 * planes: {y, u, v: Uint8Array planes with their strides yStride, uStride, vStride; or uv (NV12:
 * interleaved Cb Cr) with uvStride}; sx, sy: log2 of the chroma subsampling (4:2:0: 1, 1). */
export function yuvToRgba(planes, width, height, { matrix = 'bt601', fullRange = false, sx = 1, sy = 1 } = {}, out = null) {
  const k = coefficients(matrix, fullRange);
  out = out || new Uint8ClampedArray(width * height * 4);
  const { y: Y, yStride } = planes;
  for (let row = 0; row < height; row++) {
    const crow = row >> sy;
    for (let col = 0; col < width; col++) {
      const ccol = col >> sx;
      let u, v;
      if (planes.uv) {
        u = planes.uv[crow * planes.uvStride + 2 * ccol];
        v = planes.uv[crow * planes.uvStride + 2 * ccol + 1];
      } else {
        u = planes.u[crow * planes.uStride + ccol];
        v = planes.v[crow * planes.vStride + ccol];
      }
      const luma = k.y * (Y[row * yStride + col] - k.yOffset), cb = u - 128, cr = v - 128;
      const at = 4 * (row * width + col);
      out[at] = clamp8(luma + k.rv * cr);
      out[at + 1] = clamp8(luma + k.gu * cb + k.gv * cr);
      out[at + 2] = clamp8(luma + k.bu * cb);
      out[at + 3] = 255;
    }
  }
  return out;
}

/** Chroma subsampling (log2) of the VideoFrame pixel formats this file converts; null for others. */
export const SUBSAMPLING = { I420: [1, 1], I420A: [1, 1], NV12: [1, 1], I422: [1, 0], I444: [0, 0] };
