// A small MP4/MOV (ISO BMFF) demuxer for the first video track: the samples that WebCodecs'
// VideoDecoder takes, each with its byte range, decode and presentation time and key-frame flag,
// and the decoder configuration (codec string, avcC description). Enough for the files phones,
// ffmpeg and editors write (moov with stsz/stsc/stco/co64, stts/ctts, stss, one edit); fragmented
// files (moof) and other codecs than H.264 raise Mp4Error, and the page decodes those with a
// <video> element instead. No browser API: tests/test_web_maths.py checks it against PyAV.

export class Mp4Error extends Error {
  name = 'Mp4Error';
}

const CONTAINERS = new Set(['moov', 'trak', 'mdia', 'minf', 'stbl', 'edts', 'dinf']);

function boxes(view, start, end) {
  const out = [];
  let at = start;
  while (at + 8 <= end) {
    let size = view.getUint32(at);
    const type = String.fromCharCode(view.getUint8(at + 4), view.getUint8(at + 5), view.getUint8(at + 6), view.getUint8(at + 7));
    let header = 8;
    if (size === 1) {
      if (at + 16 > end) throw new Mp4Error('truncated box header');
      size = Number(view.getBigUint64(at + 8));
      header = 16;
    } else if (size === 0) {
      size = end - at;
    }
    if (size < header || at + size > end) throw new Mp4Error(`the ${type} box runs past the end of the file (truncated?)`);
    out.push({ type, start: at + header, end: at + size });
    at += size;
  }
  return out;
}

function child(view, box, type) {
  return boxes(view, box.start, box.end).find((b) => b.type === type) || null;
}

function path(view, box, types) {
  for (const type of types) {
    box = box && child(view, box, type);
  }
  return box;
}

function fullBoxVersion(view, box) {
  return view.getUint8(box.start);
}

function timescaleOf(view, box) {
  // mvhd / mdhd: version 1 has 64-bit times before the timescale
  return view.getUint32(box.start + (fullBoxVersion(view, box) === 1 ? 20 : 12));
}

function table(view, box, fields, header = 8) {
  // full box + entry count, then entries of `fields` 32-bit words
  const count = view.getUint32(box.start + 4);
  const rows = new Array(count);
  let at = box.start + header;
  if (at + count * fields * 4 > box.end) throw new Mp4Error('a sample table is cut short');
  for (let i = 0; i < count; i++, at += fields * 4) {
    const row = new Array(fields);
    for (let f = 0; f < fields; f++) row[f] = view.getUint32(at + 4 * f);
    rows[i] = row;
  }
  return rows;
}

// ------------------------------------------------------------- colour tags of the stream
// VideoFrame.colorSpace cannot tell an untagged stream from a BT.709 one (Chromium reports BT.709
// for both), while FFmpeg converts untagged video as BT.601: the tags are read here, from the
// H.264 sequence parameter set (VUI), else from the sample entry's colr box.

class Bits {
  constructor(bytes) {
    // the RBSP: emulation prevention bytes (00 00 03) removed
    const out = [];
    for (let i = 0; i < bytes.length; i++) {
      if (i >= 2 && bytes[i] === 3 && bytes[i - 1] === 0 && bytes[i - 2] === 0) continue;
      out.push(bytes[i]);
    }
    this.bytes = out;
    this.at = 0;
  }

  bit() {
    if (this.at >= this.bytes.length * 8) throw new Mp4Error('sequence parameter set cut short');
    const b = (this.bytes[this.at >> 3] >> (7 - (this.at & 7))) & 1;
    this.at++;
    return b;
  }

  bits(n) {
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 2 + this.bit();
    return v;
  }

  ue() {
    let zeros = 0;
    while (this.bit() === 0) {
      if (++zeros > 31) throw new Mp4Error('bad exp-Golomb code in the sequence parameter set');
    }
    return 2 ** zeros - 1 + this.bits(zeros);
  }

  se() {
    const k = this.ue();
    return k & 1 ? (k + 1) / 2 : -k / 2;
  }
}

const HIGH_PROFILES = new Set([100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135]);

/** {matrix (H.273 matrix_coefficients), fullRange} from an H.264 SPS NAL unit; null fields when
 * the VUI does not say. */
export function spsColour(nal) {
  const r = new Bits(nal.subarray(1)); // after the NAL header
  const profile = r.bits(8);
  r.bits(16); // constraint flags, level
  r.ue(); // seq_parameter_set_id
  if (HIGH_PROFILES.has(profile)) {
    const chroma = r.ue();
    if (chroma === 3) r.bit();
    r.ue();
    r.ue();
    r.bit();
    if (r.bit()) { // scaling matrices
      for (let i = 0; i < (chroma !== 3 ? 8 : 12); i++) {
        if (!r.bit()) continue;
        let last = 8, next = 8;
        for (let j = 0; j < (i < 6 ? 16 : 64); j++) {
          if (next !== 0) next = (last + r.se() + 256) % 256;
          last = next === 0 ? last : next;
        }
      }
    }
  }
  r.ue(); // log2_max_frame_num_minus4
  const poc = r.ue();
  if (poc === 0) {
    r.ue();
  } else if (poc === 1) {
    r.bit();
    r.se();
    r.se();
    const n = r.ue();
    for (let i = 0; i < n; i++) r.se();
  }
  r.ue(); // max_num_ref_frames
  r.bit();
  r.ue(); // width, height in macroblocks
  r.ue();
  if (!r.bit()) r.bit(); // frame_mbs_only_flag, mb_adaptive_frame_field_flag
  r.bit();
  if (r.bit()) for (let i = 0; i < 4; i++) r.ue(); // cropping
  const none = { matrix: null, fullRange: null };
  if (!r.bit()) return none; // no VUI
  if (r.bit() && r.bits(8) === 255) r.bits(32); // aspect ratio
  if (r.bit()) r.bit(); // overscan
  if (!r.bit()) return none; // no video signal type
  r.bits(3);
  const fullRange = r.bit() === 1;
  if (!r.bit()) return { matrix: null, fullRange };
  r.bits(16); // primaries, transfer
  return { matrix: r.bits(8), fullRange };
}

function avcColour(avcC) {
  // avcC: version, profile, compat, level, length size, then the SPS count and units
  const count = avcC[5] & 31;
  if (!count) return { matrix: null, fullRange: null };
  const length = (avcC[6] << 8) | avcC[7];
  return spsColour(avcC.subarray(8, 8 + length));
}

function colrBox(view, box) {
  // nclx: primaries, transfer, matrix (16 bits each), full range flag
  if (!box || box.end - box.start < 11) return { matrix: null, fullRange: null };
  const kind = String.fromCharCode(...new Uint8Array(view.buffer, view.byteOffset + box.start, 4));
  if (kind !== 'nclx') return { matrix: null, fullRange: null };
  return { matrix: view.getUint16(box.start + 8), fullRange: (view.getUint8(box.start + 10) & 0x80) !== 0 };
}

function hex2(n) {
  return n.toString(16).padStart(2, '0');
}

function sampleEntry(view, stsd) {
  const entries = boxes(view, stsd.start + 8, stsd.end);
  if (!entries.length) throw new Mp4Error('no sample description');
  const entry = entries[0];
  const width = view.getUint16(entry.start + 24), height = view.getUint16(entry.start + 26);
  if (entry.type !== 'avc1' && entry.type !== 'avc3') {
    throw new Mp4Error(`codec ${entry.type} (only H.264 is demuxed here)`);
  }
  const children = boxes(view, entry.start + 78, entry.end);
  const avcC = children.find((b) => b.type === 'avcC');
  if (!avcC) throw new Mp4Error('H.264 track without its avcC configuration');
  const description = new Uint8Array(view.buffer, view.byteOffset + avcC.start, avcC.end - avcC.start).slice();
  const codec = `${entry.type}.${hex2(description[1])}${hex2(description[2])}${hex2(description[3])}`;
  const stream = avcColour(description), container = colrBox(view, children.find((b) => b.type === 'colr'));
  const colour = { matrix: stream.matrix ?? container.matrix, fullRange: stream.fullRange ?? container.fullRange ?? false };
  return { codec, description, width, height, colour };
}

/** Counter-clockwise rotation in degrees (0, 90, 180, 270) of the track's display matrix, as
 * FFmpeg reports it (phones write portrait videos as landscape frames turned by it; demo.py turns
 * the frames upright). */
function displayRotation(view, tkhd) {
  if (!tkhd) return 0;
  const matrix = tkhd.start + (fullBoxVersion(view, tkhd) === 1 ? 48 : 36) + 4;
  const a = view.getInt32(matrix), b = view.getInt32(matrix + 4);
  const degrees = Math.round((-Math.atan2(b, a) * 180) / Math.PI / 90) * 90;
  return ((degrees % 360) + 360) % 360;
}

function signed32(u) {
  return u | 0;
}

/** The first video track of an MP4/MOV file (an ArrayBuffer): {codec, description, width, height,
 * timescale, fps, samples: [{offset, size, dts, cts, duration, key}], frames: the samples in
 * presentation order that an edit list keeps, with `time` in seconds from the first}. */
export function parseMp4(buffer) {
  const view = new DataView(buffer);
  const first = view.byteLength >= 8 ? String.fromCharCode(...new Uint8Array(buffer, 4, 4)) : '';
  if (!/^[a-z]{4}$/.test(first)) throw new Mp4Error('not an MP4/MOV file');
  const top = boxes(view, 0, view.byteLength);
  if (top.some((b) => b.type === 'moof')) throw new Mp4Error('fragmented MP4');
  const moov = top.find((b) => b.type === 'moov');
  if (!moov) throw new Mp4Error('no moov box (not an MP4/MOV file, or cut short)');
  const movieScale = timescaleOf(view, child(view, moov, 'mvhd'));
  const track = boxes(view, moov.start, moov.end).filter((b) => b.type === 'trak').find((trak) => {
    const hdlr = path(view, trak, ['mdia', 'hdlr']);
    return hdlr && String.fromCharCode(...new Uint8Array(buffer, hdlr.start + 8, 4)) === 'vide';
  });
  if (!track) throw new Mp4Error('no video track');
  const timescale = timescaleOf(view, path(view, track, ['mdia', 'mdhd']));
  const rotation = displayRotation(view, child(view, track, 'tkhd'));
  const stbl = path(view, track, ['mdia', 'minf', 'stbl']);
  const box = (type) => child(view, stbl, type);
  const stsd = box('stsd'), stts = box('stts'), stsc = box('stsc'), stsz = box('stsz');
  const stco = box('stco') || box('co64');
  if (!stsd || !stts || !stsc || !stsz || !stco) throw new Mp4Error('incomplete sample tables');
  const config = sampleEntry(view, stsd);

  // sizes
  const fixed = view.getUint32(stsz.start + 4), count = view.getUint32(stsz.start + 8);
  const sizes = new Array(count);
  for (let i = 0; i < count; i++) sizes[i] = fixed || view.getUint32(stsz.start + 12 + 4 * i);
  // offsets: chunks hold runs of samples (stsc), chunk starts from stco/co64
  const chunks = view.getUint32(stco.start + 4);
  const chunkOffset = (c) => (stco.type === 'co64' ? Number(view.getBigUint64(stco.start + 8 + 8 * c)) : view.getUint32(stco.start + 8 + 4 * c));
  const runs = table(view, stsc, 3);
  const offsets = new Array(count);
  let sample = 0;
  for (let r = 0; r < runs.length && sample < count; r++) {
    const last = r + 1 < runs.length ? runs[r + 1][0] - 1 : chunks;
    for (let c = runs[r][0] - 1; c < last && sample < count; c++) {
      let at = chunkOffset(c);
      for (let s = 0; s < runs[r][1] && sample < count; s++, sample++) {
        offsets[sample] = at;
        at += sizes[sample];
      }
    }
  }
  if (sample < count) throw new Mp4Error('the chunk tables list fewer samples than stsz');
  // times: durations (stts), composition offsets (ctts), key frames (stss; none: all are key frames)
  const samples = new Array(count);
  let dts = 0, i = 0;
  for (const [n, delta] of table(view, stts, 2)) {
    for (let k = 0; k < n && i < count; k++, i++) {
      samples[i] = { offset: offsets[i], size: sizes[i], dts, cts: dts, duration: delta, key: false };
      dts += delta;
    }
  }
  if (i < count) throw new Mp4Error('the time table lists fewer samples than stsz');
  const ctts = box('ctts');
  if (ctts) {
    const version = fullBoxVersion(view, ctts);
    i = 0;
    for (const [n, offset] of table(view, ctts, 2)) {
      for (let k = 0; k < n && i < count; k++, i++) samples[i].cts += version === 1 ? signed32(offset) : offset;
    }
  }
  const stss = box('stss');
  if (stss) {
    for (const [number] of table(view, stss, 1)) if (samples[number - 1]) samples[number - 1].key = true;
  } else {
    samples.forEach((s) => { s.key = true; });
  }
  for (const s of samples) {
    if (s.offset + s.size > view.byteLength) throw new Mp4Error('a sample lies past the end of the file (truncated?)');
  }

  // presentation: an edit list shifts the timeline (and may cut frames off), as FFmpeg applies it
  let start = samples.length ? Math.min(...samples.map((s) => s.cts)) : 0, end = Infinity;
  const elst = path(view, track, ['edts', 'elst']);
  if (elst) {
    const v1 = fullBoxVersion(view, elst) === 1;
    const n = view.getUint32(elst.start + 4), width = v1 ? 20 : 12;
    const edits = [];
    for (let e = 0, at = elst.start + 8; e < n; e++, at += width) {
      const duration = v1 ? Number(view.getBigUint64(at)) : view.getUint32(at);
      const mediaTime = v1 ? Number(view.getBigInt64(at + 8)) : view.getInt32(at + 4);
      if (mediaTime >= 0) edits.push({ duration, mediaTime }); // -1: an empty edit (a delay)
    }
    if (edits.length === 1) {
      start = edits[0].mediaTime;
      if (edits[0].duration > 0) end = start + (edits[0].duration * timescale) / movieScale;
    }
  }
  const frames = samples.map((s, index) => ({ ...s, index }))
    .filter((s) => s.cts >= start && s.cts < end)
    .sort((a, b) => a.cts - b.cts)
    .map((s) => ({ ...s, time: (s.cts - start) / timescale }));
  const durations = samples.map((s) => s.duration).filter((d) => d > 0).sort((a, b) => a - b);
  const fps = durations.length ? timescale / durations[durations.length >> 1] : 25;
  return { ...config, timescale, fps, rotation, samples, frames };
}
