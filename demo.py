"""Animate one image with one driving video.

    python demo.py --config config/vox-256.yaml --checkpoint vox-cpk.pth.tar \\
        --source_image photo.jpg --driving_video driving.mp4 --result_video result.mp4 --relative --adapt_scale

The image (any size or aspect ratio; gray, RGBA and 16-bit files are converted) and the driving
frames are fitted to the config's frame_shape (--fit); the result keeps the driving video's fps
and, by default, its audio. With --crop_source the face is cut from the photo first, and with
--paste_back every generated frame is blended back into the full-resolution photo.

Python API kept from the original: `load_checkpoints(config_path, checkpoint_path, cpu=False)`
-> (generator, kp_detector) and `make_animation(source_image, driving_video, generator,
kp_detector, relative=True, adapt_movement_scale=True, cpu=False)` -> list of (H, W, 3) float
frames; both run on the batched engine of `inference.py`.
"""
import argparse
import collections
import contextlib
import os
import sys
import tempfile
from typing import List, Optional, Sequence

import numpy as np
import torch

from inference import FITS, AnimationEngine, fit_image, load_networks

PROG = 'demo.py'


# ----------------------------------------------------------------------------- Python API
def _device(cpu: bool) -> torch.device:
    return torch.device('cpu' if cpu or not torch.cuda.is_available() else 'cuda')


def load_checkpoints(config_path: str, checkpoint_path: str, cpu: bool = False):
    """(generator, kp_detector) built from a config, weights loaded (weights_only), eval mode, on
    CUDA unless `cpu` (or no GPU is present)."""
    generator, kp_detector, _ = load_networks(config_path, checkpoint_path)
    device = _device(cpu)
    return generator.to(device).eval(), kp_detector.to(device).eval()


def make_animation(source_image: np.ndarray, driving_video: Sequence[np.ndarray], generator, kp_detector,
                   relative: bool = True, adapt_movement_scale: bool = True, cpu: bool = False,
                   batch_size: int = 8) -> List[np.ndarray]:
    """The source image (H, W, 3) float in [0, 1] animated by the driving frames (a list of the
    same), in fp32 -> list of (H, W, 3) float32 frames, as the original returned."""
    device = 'cpu' if cpu else next(generator.parameters()).device
    engine = AnimationEngine(generator, kp_detector, device=device, precision='fp32', batch_size=batch_size)
    engine.set_source(source_image)
    return list(engine.animate(driving_video, relative=relative, adapt_scale=adapt_movement_scale,
                               output='float'))


def find_best_frame(source: np.ndarray, driving: Sequence[np.ndarray], cpu: bool = False) -> int:
    """Index of the driving frame whose face landmarks best match the source's (face-alignment)."""
    import face
    device = 'cpu' if cpu else None
    landmarker = face.FaceLandmarker(device=device)
    source_landmarks = landmarker(np.asarray(source))
    driving_landmarks = face.landmarks_for_frames(driving, landmarker=landmarker)
    return face.find_best_frame(source_landmarks, driving_landmarks)


# ----------------------------------------------------------------------------------- CLI
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class UserError(Exception):
    """A mistake in the command line or the inputs: printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=_Formatter)
    p.add_argument('--config', required=True, help='model config (YAML), e.g. config/vox-256.yaml')
    p.add_argument('--checkpoint', default='vox-cpk.pth.tar', help='weights (.pth.tar) that fit the config')
    p.add_argument('--source_image', default='sup-mat/source.png', help='the image to animate')
    p.add_argument('--driving_video', default='driving.mp4',
                   help='the video whose motion is transferred (.mp4/.mov/.mkv/.avi/.webm, .gif, a frame folder)')
    p.add_argument('--result_video', default='result.mp4',
                   help='output: .mp4/.mov/.mkv/.avi video, .gif, or .png (a folder of frames)')
    p.add_argument('--relative', action='store_true',
                   help='relative motion: move the source keypoints by the driving keypoints\' displacement '
                        'from the initial driving frame (use this for a source that differs from the driving '
                        'subject); without it, absolute driving keypoints are used')
    p.add_argument('--adapt_scale', action='store_true',
                   help='with --relative: scale the motion by the ratio of the source\'s and the initial '
                        'driving frame\'s keypoint spread')
    p.add_argument('--find_best_frame', action='store_true',
                   help='take as initial driving frame the one whose face pose best matches the source '
                        '(needs face-alignment, see requirements-face.txt)')
    p.add_argument('--best_frame', type=int, default=None, help='index of the initial driving frame (0-based)')
    p.add_argument('--fit', choices=FITS, default='resize',
                   help='how images of another size reach frame_shape: resize (stretch, as the original), '
                        'crop (centre crop to the aspect ratio, then resize), none (must already fit)')
    p.add_argument('--crop_source', action='store_true',
                   help='detect the largest face in the source photo and animate a square crop around it')
    p.add_argument('--paste_back', action='store_true',
                   help='with --crop_source: blend each generated frame back into the full-resolution photo '
                        '(the result has the photo\'s size)')
    p.add_argument('--detector', choices=('haar', 'face_alignment'), default='haar',
                   help='face detector for --crop_source')
    p.add_argument('--increase', type=float, default=0.1,
                   help='--crop_source: margin around the face box, fraction of its size on each side')
    p.add_argument('--feather', type=float, default=0.1,
                   help='--paste_back: width of the blended border, fraction of the crop side')
    p.add_argument('--preview', default=None,
                   help='also write a side-by-side video (source | driving | result, at the model\'s frame size) here')
    p.add_argument('--no_audio', action='store_true', help='do not copy the driving video\'s audio track')
    p.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: cuda when available, else cpu)')
    p.add_argument('--cpu', action='store_true', help='same as --device cpu (the original\'s flag)')
    p.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'bf16', 'fp16'),
                   help='auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32')
    p.add_argument('--batch_size', type=int, default=4, help='driving frames per forward pass')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile the networks (slow start, faster on long videos)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def _check_output(path: str) -> str:
    """The output's format; fails early (before any work) when it cannot be written."""
    from video_io import _MUXERS
    ext = os.path.splitext(path)[1].lower()
    if ext not in _MUXERS and ext not in ('.gif', '.png'):
        raise UserError('--result_video: %s: unknown format %r (use .mp4, .mov, .mkv, .avi, .gif or .png)'
                        % (path, ext))
    if os.path.isdir(path) and ext != '.png':
        raise UserError('--result_video: %s is a folder' % path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError('--result_video: cannot create the folder %s (%s)' % (folder, e.strerror or e)) from None
    try:  # a real probe: os.access says yes for root, and for /proc
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.write-test-'):
            pass
    except OSError as e:
        raise UserError('--result_video: cannot write into %s (%s)' % (folder, e.strerror or e)) from None
    return ext


def run(args: argparse.Namespace) -> str:
    """The demo; returns the written path. Raises UserError (and the project's one-line errors)."""
    import face
    from tqdm import tqdm

    from video_io import VideoWriter, copy_audio, has_audio, open_video, read_image

    if args.paste_back and not args.crop_source:
        raise UserError('--paste_back needs --crop_source (it pastes the animated face crop back)')
    if args.find_best_frame and args.best_frame is not None:
        raise UserError('--find_best_frame and --best_frame N exclude each other')
    if args.adapt_scale and not args.relative:
        print('%s: note: --adapt_scale has no effect without --relative' % PROG, file=sys.stderr)
    _check_output(args.result_video)
    if args.preview is not None:
        try:
            _check_output(args.preview)
        except UserError as e:
            raise UserError(str(e).replace('--result_video', '--preview')) from None
        if os.path.abspath(args.preview) == os.path.abspath(args.result_video):
            raise UserError('--preview: %s is also --result_video' % args.preview)
    if not os.path.isfile(args.source_image):
        raise UserError('--source_image: file not found: %s' % args.source_image)
    photo = read_image(args.source_image)  # uint8 (H, W, 3)
    if not os.path.exists(args.driving_video):
        raise UserError('--driving_video: file not found: %s' % args.driving_video)
    video = open_video(args.driving_video)
    if video.num_frames < 1:
        raise UserError('--driving_video: %s has no frames' % args.driving_video)
    if args.best_frame is not None and not 0 <= args.best_frame < video.num_frames:
        raise UserError('--best_frame: %d is outside 0..%d (%s has %d frames)'
                        % (args.best_frame, video.num_frames - 1, args.driving_video, video.num_frames))

    device = 'cpu' if args.cpu else args.device
    landmarker = None
    if args.find_best_frame:  # before the model loads: a missing package fails fast
        try:
            landmarker = face.FaceLandmarker(device='cpu' if args.cpu else (args.device or None))
        except face.FaceToolsError as e:
            raise UserError('--find_best_frame: %s' % e) from None
    engine = AnimationEngine.from_checkpoint(args.config, args.checkpoint, device=device,
                                             precision=args.precision, batch_size=args.batch_size,
                                             compile=args.compile)
    size = engine.frame_shape

    geometry = None
    if args.crop_source:
        detector = face.make_detector(args.detector, device=str(engine.device))
        box = face.find_face(photo, detector, what='--source_image %s' % args.source_image)
        source, geometry = face.crop_face(photo, box, out_size=tuple(size), increase=args.increase)
    else:
        source = fit_image(photo, size, args.fit)

    def driving_frames():
        for frame in video:
            yield fit_image(frame, size, args.fit)

    initial = None
    if args.best_frame is not None or args.find_best_frame:
        index = args.best_frame
        if index is None:
            index = face.find_best_frame(landmarker(source), face.landmarks_for_frames(
                driving_frames(), landmarker=landmarker, progress=not args.quiet))
            print('%s: best frame: %d' % (PROG, index), file=sys.stderr)
        # Animating forward and backward from frame i, as the original did, gives every frame
        # the keypoints of frame i as initial ones: one forward pass with them is the same.
        initial = fit_image(video.read([index])[0], size, args.fit)

    engine.set_source(source)
    pending = collections.deque()  # driving frames waiting for their result (preview only)

    def feed():
        for frame in driving_frames():
            if args.preview is not None:
                pending.append(frame)
            yield frame

    frames = engine.animate(feed(), relative=args.relative, adapt_scale=args.adapt_scale, initial_frame=initial)
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(VideoWriter(args.result_video, fps=video.info.fps))
        preview = stack.enter_context(VideoWriter(args.preview, fps=video.info.fps)) if args.preview else None
        for frame in tqdm(frames, total=video.num_frames, unit='frame', desc='animate', disable=args.quiet):
            if preview is not None:
                preview.write(np.concatenate([source, pending.popleft(), frame], axis=1))
            if geometry is not None and args.paste_back:
                frame = face.paste_back(photo, frame, geometry, feather=args.feather)
            writer.write(frame)
    if not args.no_audio and has_audio(args.driving_video):
        for path in (args.result_video, args.preview):
            if path is not None and os.path.splitext(path)[1].lower() not in ('.gif', '.png'):
                copy_audio(args.driving_video, path)
    return args.result_video


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from checkpoint import CheckpointError
    from config import ConfigError
    from face import FaceToolsError
    from video_io import MediaError

    try:
        path = run(args)
    except (UserError, ConfigError, CheckpointError, MediaError, FaceToolsError, ValueError, OSError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print('%s: error: %s' % (PROG, message), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('%s: interrupted; %s was not written' % (PROG, args.result_video), file=sys.stderr)
        return 130
    if not args.quiet:
        print('%s: wrote %s' % (PROG, path), file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
