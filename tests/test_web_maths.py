"""The in-browser page's own arithmetic (web/*.js, run by node) against the Python it mirrors:
normalize_kp (relative motion, relative Jacobians, adapt scale by the convex hull area), the One-Euro
filter of steady keypoints (engine.smoothing.KeypointSmoother and its defaults), SHA-256 (hashlib),
the MP4 demuxer (PyAV's packets, frame times, colour tags and rotation) and the Y'CbCr -> RGB
conversion of decoded frames (the exact formula, and PyAV's own conversion of a real video).

Needs node (>= 18) on PATH; without it the tests skip, except under CI=1 where they fail.
"""
import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import ROOT
from engine import smoothing
from modules.keypoints import convex_hull_area, normalize_kp

CHECK = ROOT / 'tests' / 'web_check.mjs'
SAMPLE = ROOT / 'assets' / 'shapes-driving.mp4'
# both sides compute in float64 with the same operations, in the same order but for the sums of
# the hull's shoelace formula (numpy's dot): a few units in the last place, far below this
EXACT = dict(rtol=1e-12, atol=1e-12)


def node_or_skip() -> str:
    path = shutil.which('node')
    if not path:
        reason = 'node is not installed (apt-get install -y nodejs): the page\'s JavaScript cannot be run'
        if os.environ.get('CI'):
            pytest.fail(reason + ' (CI is set)')
        pytest.skip(reason)
    return path


def run_js(*jobs):
    """The results of web_check.mjs for these jobs (one node process)."""
    out = subprocess.run([node_or_skip(), str(CHECK)], input=json.dumps({'jobs': list(jobs)}), capture_output=True,
                         text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def js_kp(value, jacobian=None):
    return {'value': value.ravel().tolist(), 'jacobian': None if jacobian is None else jacobian.ravel().tolist(),
            'batch': int(value.shape[0]), 'num': int(value.shape[1])}


def random_kp(rng, batch, num, jacobian=True):
    value = rng.uniform(-1, 1, (batch, num, 2))
    kp = {'value': value}
    if jacobian:
        kp['jacobian'] = np.eye(2) + 0.3 * rng.standard_normal((batch, num, 2, 2))
    return kp


# ------------------------------------------------------------------------------ normalize_kp
CASES = [dict(relative=r, adapt_scale=a, relative_jacobian=j)
         for r in (False, True) for a in (False, True) for j in (False, True) if r or not (a or j)]


def test_normalize_kp_matches_the_python_function_on_random_keypoints():
    rng = np.random.default_rng(0)
    jobs, expected = [], []
    for num in (1, 2, 3, 10):
        for batch in (1, 4):
            for jacobian in (True, False):
                for case in CASES:
                    source, initial = random_kp(rng, 1, num, jacobian), random_kp(rng, 1, num, jacobian)
                    driving = random_kp(rng, batch, num, jacobian)
                    jobs.append({'op': 'normalize', 'source': js_kp(source['value'], source.get('jacobian')),
                                 'driving': js_kp(driving['value'], driving.get('jacobian')),
                                 'initial': js_kp(initial['value'], initial.get('jacobian')),
                                 'options': {'relative': case['relative'], 'adaptScale': case['adapt_scale'],
                                             'relativeJacobian': case['relative_jacobian']}})
                    expected.append(normalize_kp(source, driving, initial, adapt_movement_scale=case['adapt_scale'],
                                                 use_relative_movement=case['relative'],
                                                 use_relative_jacobian=case['relative_jacobian']))
    for got, want, job in zip(run_js(*jobs), expected, jobs):
        np.testing.assert_allclose(np.array(got['value']).reshape(want['value'].shape), want['value'], **EXACT,
                                   err_msg=str(job['options']))
        if 'jacobian' in want:
            np.testing.assert_allclose(np.array(got['jacobian']).reshape(want['jacobian'].shape), want['jacobian'],
                                       **EXACT, err_msg=str(job['options']))
        else:
            assert got['jacobian'] is None


def test_convex_hull_area_matches_python_including_degenerate_point_sets():
    rng = np.random.default_rng(1)
    sets = [rng.uniform(-1, 1, (n, 2)) for n in (3, 4, 10, 30)]
    sets += [np.array([[0, 0], [1, 1], [2, 2], [3, 3.0]]),  # collinear: 0
             np.array([[0.5, 0.5]] * 4),  # one point repeated: 0
             np.array([[0, 0], [1, 0], [1, 0], [0, 1], [0, 1.0]]),  # duplicates: 0.5
             np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [1, 0]])]  # inner and edge points: 4
    got = run_js(*[{'op': 'hull', 'points': s.tolist()} for s in sets])
    want = [convex_hull_area(s) for s in sets]
    np.testing.assert_allclose(got, want, **EXACT)
    assert want[-4:] == [0.0, 0.0, 0.5, 4.0]  # the Python side is right on these too


def test_adapt_scale_of_a_degenerate_initial_hull_is_one_on_both_sides():
    source = {'value': np.array([[[0, 0], [1, 0], [0, 1.0]]])}
    flat = {'value': np.array([[[0, 0], [0.5, 0.5], [1, 1.0]]])}  # collinear: area 0
    driving = {'value': np.array([[[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]])}
    want = normalize_kp(source, driving, flat, adapt_movement_scale=True, use_relative_movement=True)
    (got,) = run_js({'op': 'normalize', 'source': js_kp(source['value']), 'driving': js_kp(driving['value']),
                     'initial': js_kp(flat['value']), 'options': {'relative': True, 'adaptScale': True}})
    np.testing.assert_allclose(np.array(got['value']).reshape(1, 3, 2), want['value'], **EXACT)
    np.testing.assert_allclose(want['value'], driving['value'] - flat['value'] + source['value'], **EXACT)


# --------------------------------------------------------------------------- steady keypoints
def test_one_euro_defaults_are_the_python_constants():
    (got,) = run_js({'op': 'defaults'})
    assert got == {'min_cutoff': smoothing.DEFAULT_MIN_CUTOFF, 'beta': smoothing.DEFAULT_BETA,
                   'd_cutoff': smoothing.DEFAULT_D_CUTOFF}


@pytest.mark.parametrize('timing', ['video', 'webcam'])
def test_one_euro_filter_matches_the_keypoint_smoother_on_a_random_sequence(timing):
    """A random walk of 60 frames (noise and jumps) given in calls of 1-5 frames: the video's
    1 / fps between frames, or a webcam's irregular real times."""
    rng = np.random.default_rng(2 if timing == 'video' else 3)
    frames, num, fps = 60, 10, 25.0
    value = np.cumsum(0.02 * rng.standard_normal((frames, num, 2)), axis=0)
    value[30:] += 0.3  # a fast move
    jacobian = np.eye(2) + np.cumsum(0.01 * rng.standard_normal((frames, num, 2, 2)), axis=0)
    calls, start = [], 0
    while start < frames:
        n = 1 if timing == 'webcam' else int(rng.integers(1, 6))
        dt = None if timing == 'video' else float(rng.uniform(0.02, 0.2))
        calls.append((slice(start, min(start + n, frames)), dt))
        start += n
    python = smoothing.KeypointSmoother(fps)
    want = [python({'value': value[s], 'jacobian': jacobian[s]}, dt) for s, dt in calls]
    (got,) = run_js({'op': 'smooth', 'fps': fps, 'calls': [{'kp': js_kp(value[s], jacobian[s]), 'dt': dt}
                                                          for s, dt in calls]})
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.array(g['value']).reshape(w['value'].shape), w['value'], **EXACT)
        np.testing.assert_allclose(np.array(g['jacobian']).reshape(w['jacobian'].shape), w['jacobian'], **EXACT)
    smoothed = np.concatenate([np.array(g['value']).reshape(-1, num, 2) for g in got])
    assert np.abs(smoothed - value).max() > 1e-3  # the filter did something


# ----------------------------------------------------------------------------------- files
def test_sha256_matches_hashlib():
    rng = np.random.default_rng(4)
    blobs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (0, 1, 55, 56, 63, 64, 65, 1000, 100_003)]
    for blob, got in zip(blobs, run_js(*[{'op': 'sha256', 'hex': b.hex()} for b in blobs])):
        assert got['plain'] == got['page'] == hashlib.sha256(blob).hexdigest()


def ffmpeg(*args):
    import imageio_ffmpeg
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-hide_banner', '-loglevel', 'error', '-y', *args], check=True)


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
    """H.264 MP4s as phones and ffmpeg write them: B-frames with an edit list, no B-frames, an odd
    size, colour tags (BT.709 full range; BT.601), display rotations, a MOV."""
    folder = tmp_path_factory.mktemp('clips')
    src = ['-f', 'lavfi', '-i', 'testsrc2=size=64x48:rate=12:duration=1.5']
    x264 = ['-c:v', 'libx264', '-pix_fmt', 'yuv420p']
    ffmpeg(*src, *x264, str(folder / 'bframes.mp4'))
    ffmpeg(*src, *x264, '-profile:v', 'baseline', str(folder / 'baseline.mp4'))
    ffmpeg('-f', 'lavfi', '-i', 'testsrc2=size=70x38:rate=30000/1001:duration=1', *x264, str(folder / 'odd.mp4'))
    ffmpeg(*src, *x264, '-colorspace', 'bt709', '-color_primaries', 'bt709', '-color_trc', 'bt709',
           '-color_range', 'pc', str(folder / 'bt709-full.mp4'))
    ffmpeg(*src, *x264, '-movflags', '+write_colr', '-colorspace', 'smpte170m', str(folder / 'tagged-601.mp4'))
    for degrees in (90, 180, 270):
        ffmpeg('-display_rotation', str(degrees), '-i', str(folder / 'baseline.mp4'), '-c', 'copy',
               str(folder / ('rot%d.mp4' % degrees)))
    ffmpeg(*src, *x264, str(folder / 'movie.mov'))
    return folder


def pyav_facts(path):
    import av
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        packets = [(p.pos, p.size, bool(p.is_keyframe)) for p in c.demux(stream) if p.size]
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        times = [float(f.pts * stream.time_base) for f in frames]
        return {'packets': packets, 'times': [t - times[0] for t in times], 'fps': float(stream.average_rate),
                'rotation': (frames[0].rotation or 0) % 360, 'colorspace': int(frames[0].colorspace),
                'full': int(frames[0].color_range) == 2, 'size': (frames[0].width, frames[0].height)}


def test_mp4_demuxer_finds_the_packets_and_frames_pyav_finds(clips):
    paths = [SAMPLE] + sorted(clips.iterdir())
    for path, got in zip(paths, run_js(*[{'op': 'mp4', 'path': str(p)} for p in paths])):
        want = pyav_facts(path)
        name = path.name
        assert [tuple(s) for s in got['samples']] == want['packets'], name
        np.testing.assert_allclose(got['times'], want['times'], atol=1e-9, err_msg=name)  # every frame, in order
        assert got['fps'] == pytest.approx(want['fps'], rel=1e-9), name
        assert got['rotation'] == want['rotation'], name
        assert (got['width'], got['height']) == want['size'], name
        assert got['codec'].startswith('avc1.'), name
        # the colour tags that decide the conversion: FFmpeg's frame colorspace 1 = BT.709, full range
        tagged = got['colour']['matrix']
        assert (tagged == 1) == (want['colorspace'] == 1), name
        assert got['colour']['fullRange'] == want['full'], name
    facts = {p.name: g for p, g in zip(paths, run_js(*[{'op': 'mp4', 'path': str(p)} for p in paths]))}
    assert facts['bt709-full.mp4']['colour'] == {'matrix': 1, 'fullRange': True}
    assert facts['tagged-601.mp4']['colour'] == {'matrix': 6, 'fullRange': False}
    assert facts['shapes-driving.mp4']['colour'] == {'matrix': None, 'fullRange': False}  # untagged: BT.601
    assert [facts['rot%d.mp4' % d]['rotation'] for d in (90, 180, 270)] == [90, 180, 270]


def test_mp4_demuxer_refuses_what_it_cannot_read(tmp_path):
    data = SAMPLE.read_bytes()
    (tmp_path / 'cut.mp4').write_bytes(data[:len(data) // 2])  # moov first, samples cut off
    (tmp_path / 'notes.mp4').write_bytes(b'not a video at all\n' * 20)
    ffmpeg('-f', 'lavfi', '-i', 'testsrc2=size=64x48:rate=12:duration=0.5', '-c:v', 'libx264', '-pix_fmt', 'yuv420p',
           '-movflags', 'frag_keyframe+empty_moov', str(tmp_path / 'fragmented.mp4'))
    got = run_js(*[{'op': 'mp4error', 'path': str(tmp_path / n)} for n in ('cut.mp4', 'notes.mp4', 'fragmented.mp4')])
    assert got[0].startswith('Mp4Error:') and 'truncated' in got[0]
    assert got[1].startswith('Mp4Error:')
    assert got[2] == 'Mp4Error: fragmented MP4'


# ---------------------------------------------------------------------------------- colour
def exact_rgb(y, u, v, kr, kb, full):
    """Y'CbCr planes (4:2:0, chroma repeated over its 2x2 block) -> RGB by the real formula,
    rounded half up once (as colour.js)."""
    u = np.repeat(np.repeat(u, 2, 0), 2, 1)[:y.shape[0], :y.shape[1]].astype(np.float64) - 128
    v = np.repeat(np.repeat(v, 2, 0), 2, 1)[:y.shape[0], :y.shape[1]].astype(np.float64) - 128
    luma = y.astype(np.float64) if full else (y.astype(np.float64) - 16) * 255 / 219
    c = 1 if full else 255 / 224
    kg = 1 - kr - kb
    rgb = np.stack([luma + 2 * (1 - kr) * c * v, luma - 2 * kb * (1 - kb) / kg * c * u - 2 * kr * (1 - kr) / kg * c * v,
                    luma + 2 * (1 - kb) * c * u], -1)
    return np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)


def js_rgb(y, u, v, matrix, full):
    (hexed,) = run_js({'op': 'yuv', 'width': y.shape[1], 'height': y.shape[0],
                       'planes': {'y': y.tobytes().hex(), 'u': u.tobytes().hex(), 'v': v.tobytes().hex(),
                                  'yStride': y.shape[1], 'uStride': u.shape[1], 'vStride': v.shape[1]},
                       'options': {'matrix': matrix, 'fullRange': full}})
    return np.frombuffer(bytes.fromhex(hexed), np.uint8).reshape(y.shape + (4,))


@pytest.mark.parametrize('matrix,kr,kb', [('bt601', 0.299, 0.114), ('bt709', 0.2126, 0.0722), ('bt2020', 0.2627, 0.0593)])
@pytest.mark.parametrize('full', [False, True])
def test_colour_conversion_is_the_exact_formula(matrix, kr, kb, full):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 256, (31, 45), dtype=np.uint8)  # odd sizes: the last chroma sample covers one row/column
    u, v = (rng.integers(0, 256, (16, 23), dtype=np.uint8) for _ in range(2))
    rgba = js_rgb(y, u, v, matrix, full)
    assert (rgba[..., 3] == 255).all()
    np.testing.assert_array_equal(rgba[..., :3], exact_rgb(y, u, v, kr, kb, full))


def test_colour_conversion_is_within_three_levels_of_pyav():
    """PyAV (swscale) converts the same decoded planes with fixed-point tables that truncate each
    of up to three terms (Y, Cb, Cr) on its own: < 1 level each, so at most 3 levels apart."""
    import av
    with av.open(str(SAMPLE)) as c:
        frame = next(c.decode(video=0))
        planes = frame.to_ndarray(format='yuv420p')
        rgb = av.video.reformatter.VideoReformatter().reformat(frame, format='rgb24').to_ndarray()
    h, w = rgb.shape[:2]
    y, u, v = planes[:h], planes[h:h + h // 4].reshape(h // 2, w // 2), planes[h + h // 4:].reshape(h // 2, w // 2)
    got = js_rgb(y, u, v, 'bt601', False)[..., :3].astype(int)
    assert np.abs(got - rgb).max() <= 3
