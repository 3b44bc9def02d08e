"""Animate one image with one driving video.

    python demo.py --config config/vox-256.yaml --checkpoint vox-cpk.pth.tar \\
        --source_image photo.jpg --driving_video driving.mp4 --result_video result.mp4 --relative --adapt_scale

The image (any size or aspect ratio; gray, RGBA and 16-bit files are converted) and the driving
frames are fitted to the config's frame_shape (--fit); the result keeps the driving video's fps
and, by default, its audio. With --crop_source the face is cut from the photo first, and with
--paste_back every generated frame is blended back into the full-resolution photo. A checkpoint
written by this project carries its config, so --config may be left out for it. With --backend onnx
--onnx_dir DIR the networks run from a folder written by export.py on onnxruntime instead of torch.

Outputs never replace an input, nor a file or folder this tool did not write (unless --overwrite).

Python API kept from the original: `load_checkpoints(config_path, checkpoint_path, cpu=False)`
-> (generator, kp_detector) and `make_animation(source_image, driving_video, generator,
kp_detector, relative=True, adapt_movement_scale=True, cpu=False)` -> list of (H, W, 3) float
frames; both run on the batched engine of `engine/torch_engine.py`.
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence

import numpy as np

from core.cli import HelpFormatter, interrupted, one_line_warnings, report
from engine.smoothing import add_smoothing_flags, smoother_from_flags
from media.formats import VIDEO_INPUTS, VIDEO_OUTPUTS, listing
from media.images import FITS, MediaError, read_image
from media.outputs import OutputError, check_outputs, exit_on_sigterm
from pipeline import PhotoOptions, animate_photo, check_driving

PROG = 'demo.py'


# ----------------------------------------------------------------------------- Python API
def load_checkpoints(config_path: str, checkpoint_path: str, cpu: bool = False):
    """(generator, kp_detector) built from a config, weights loaded (weights_only), eval mode, on
    CUDA unless `cpu` (or no GPU is present)."""
    from core.runtime import resolve_device
    from engine.torch_engine import load_networks

    generator, kp_detector, _ = load_networks(config_path, checkpoint_path)
    device = resolve_device('cpu' if cpu else None)
    return generator.to(device).eval(), kp_detector.to(device).eval()


def make_animation(source_image: np.ndarray, driving_video: Sequence[np.ndarray], generator, kp_detector,
                   relative: bool = True, adapt_movement_scale: bool = True, cpu: bool = False,
                   batch_size: int = 8) -> List[np.ndarray]:
    """The source image (H, W, 3) float in [0, 1] animated by the driving frames (a list of the
    same), in fp32 -> list of (H, W, 3) float32 frames, as the original returned."""
    from engine.torch_engine import AnimationEngine

    device = 'cpu' if cpu else next(generator.parameters()).device
    engine = AnimationEngine(generator, kp_detector, device=device, precision='fp32', batch_size=batch_size)
    engine.set_source(source_image)
    return list(engine.animate(driving_video, relative=relative, adapt_scale=adapt_movement_scale,
                               output='float'))


def find_best_frame(source: np.ndarray, driving: Sequence[np.ndarray], cpu: bool = False) -> int:
    """Index of the driving frame whose face landmarks best match the source's (face-alignment)."""
    from analysis import face
    landmarker = face.FaceLandmarker(device='cpu' if cpu else None)
    return face.find_best_frame(landmarker(np.asarray(source)), face.landmarks_for_frames(driving, landmarker=landmarker))


# ----------------------------------------------------------------------------------- CLI
class UserError(Exception):
    """A mistake in the command line or the inputs: printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--config', default=None,
                   help='model config (YAML), e.g. config/vox-256.yaml; default: the config stored in the checkpoint')
    p.add_argument('--checkpoint', default='vox-cpk.pth.tar', help='weights (.pth.tar) that fit the config')
    p.add_argument('--source_image', default='sup-mat/source.png', help='the image to animate')
    p.add_argument('--driving_video', default='driving.mp4',
                   help='the video whose motion is transferred (%s, or a folder of frames)' % listing(VIDEO_INPUTS))
    p.add_argument('--result_video', default='result.mp4',
                   help='output: %s (.png: a folder of frames)' % listing(VIDEO_OUTPUTS))
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
    p.add_argument('--allow_damaged', action='store_true',
                   help='animate with the frames that decode of a driving video that decodes fewer frames than its '
                        'container lists (a warning), instead of stopping')
    p.add_argument('--overwrite', action='store_true',
                   help='replace an existing output that this tool did not write (never an input, never a '
                        'folder holding anything but frames)')
    p.add_argument('--max_pixels', type=int, default=None,
                   help='refuse a source image larger than this many pixels (default: $FOMM_MAX_PIXELS or 64e6)')
    p.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: cuda when available, else cpu)')
    p.add_argument('--cpu', action='store_true', help='same as --device cpu (the original\'s flag)')
    p.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'bf16', 'fp16'),
                   help='auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32')
    p.add_argument('--batch_size', type=int, default=4, help='driving frames per forward pass')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile the networks (slow start, faster on long videos)')
    p.add_argument('--backend', choices=('torch', 'onnx'), default='torch',
                   help='onnx: run an export of export.py (--onnx_dir) with onnxruntime instead of torch '
                        '(--config, --checkpoint, --precision and --compile are then not used)')
    p.add_argument('--onnx_dir', default=None, help='--backend onnx: the folder export.py wrote')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    add_smoothing_flags(p)
    return p


def photo_options(args: argparse.Namespace, fps: Optional[float] = None) -> PhotoOptions:
    """The options of the flags; fps: the driving video's (the keypoint filter's time step)."""
    options = PhotoOptions(relative=args.relative, adapt_scale=args.adapt_scale, fit=args.fit,
                           crop_source=args.crop_source, paste_back=args.paste_back, detector=args.detector,
                           increase=args.increase, feather=args.feather, best_frame=args.best_frame,
                           find_best_frame=args.find_best_frame, audio=not args.no_audio,
                           smooth=smoother_from_flags(args, fps))
    options.check()
    return options


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model: inputs that exist, known output formats, and the
    output-path rule (outputs.check_outputs), all before any work starts."""
    from media.formats import output_format

    if args.adapt_scale and not args.relative:
        print('%s: note: --adapt_scale has no effect without --relative' % PROG, file=sys.stderr)
    model_flags = ('--onnx_dir',) if args.backend == 'onnx' else ('--checkpoint', '--config')
    if args.backend == 'onnx' and not args.onnx_dir:
        raise UserError('--backend onnx needs --onnx_dir (a folder written by export.py)')
    inputs = {flag: getattr(args, flag[2:]) for flag in ('--source_image', '--driving_video') + model_flags}
    for flag, path in inputs.items():
        if path is not None and not os.path.exists(path):
            raise UserError('%s: file not found: %s' % (flag, path))
    outputs = {'--result_video': args.result_video, '--preview': args.preview}
    kinds = {flag: output_format(path, flag).writes_as for flag, path in outputs.items() if path is not None}
    check_outputs(outputs, inputs, overwrite=args.overwrite,
                  folder_ok=[flag for flag, kind in kinds.items() if kind == 'frames'])


def make_landmarker(args: argparse.Namespace):
    """face-alignment's landmarker for --find_best_frame (before the model loads: fails fast)."""
    from analysis import face
    try:
        return face.FaceLandmarker(device='cpu' if args.cpu else (args.device or None))
    except face.FaceToolsError as e:
        raise UserError('--find_best_frame: %s' % e) from None


def make_engine(args: argparse.Namespace):
    """The torch engine, or with --backend onnx the onnxruntime one (same API; torch is then not
    imported at all, so the demo runs where only onnxruntime is installed)."""
    device = 'cpu' if args.cpu else args.device
    if args.backend == 'torch':
        from core.checkpoint import CheckpointError
        from engine.torch_engine import AnimationEngine
        try:
            return AnimationEngine.from_checkpoint(args.config, args.checkpoint, device=device,
                                                   precision=args.precision, batch_size=args.batch_size,
                                                   compile=args.compile)
        except CheckpointError as e:
            raise UserError(str(e)) from None
    try:
        from engine.onnx_engine import OnnxEngine
    except ImportError as e:
        raise UserError('--backend onnx: %s (pip install -r requirements-onnx.txt)' % e) from None
    return OnnxEngine.from_export(args.onnx_dir, batch_size=args.batch_size, device=device)


def run(args: argparse.Namespace) -> str:
    """The demo; returns the written path. Raises UserError (and the project's one-line errors)."""
    from tqdm import tqdm

    from media.video_io import open_video

    photo_options(args)  # flags that exclude each other: before any file is read
    check_args(args)
    photo = read_image(args.source_image, limit=args.max_pixels)  # uint8 (H, W, 3), decoded in full
    video = open_video(args.driving_video, allow_damaged=args.allow_damaged)
    options = photo_options(args, video.info.fps)
    check_driving(video, options)
    landmarker = make_landmarker(args) if args.find_best_frame else None
    engine = make_engine(args)
    with tqdm(total=video.num_frames, unit='frame', desc='animate', disable=args.quiet) as bar:
        animate_photo(engine, photo, video, args.result_video, options, preview=args.preview, landmarker=landmarker,
                      progress=lambda done, total: bar.update(done - bar.n), device=str(engine.device))
    return args.result_video


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    exit_on_sigterm()  # SIGTERM unwinds like Ctrl-C: no half-written temporary stays behind
    from analysis.face import FaceToolsError
    from core.config import ConfigError

    try:
        path = run(args)
    except (UserError, ConfigError, MediaError, OutputError, FaceToolsError, ValueError,
            OSError) as e:
        return report(PROG, e)
    except (KeyboardInterrupt, SystemExit) as e:
        return interrupted(PROG, e, '%s was not written' % args.result_video)
    if not args.quiet:
        print('%s: wrote %s' % (PROG, path), file=sys.stderr)
    return 0


if __name__ == '__main__':
    one_line_warnings('demo.py')
    sys.exit(main())
