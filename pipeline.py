"""One photo animated by one driving video, from the photo to the written files: the run mode
behind demo.py and the web app (app.py).

    options = PhotoOptions(relative=True, adapt_scale=True, crop_source=True, paste_back=True)
    animate_photo(engine, photo, video, 'result.mp4', options, preview='preview.mp4')

Source: the photo fitted to the model's frame size (images.fit), or with `crop_source` the largest
face cut out as a square (face.crop_face). Initial driving frame: the first, `best_frame`, or the
one whose face landmarks best match the source (`find_best_frame`). Frames stream from the
driving video through the engine (either backend: the torch engine or onnx_engine) into the
result (pasted back into the full photo with `paste_back`) and the side-by-side preview; the
driving video's audio is copied. Outputs are written to temporary names and renamed when whole.
"""
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np

from engine.smoothing import KeypointSmoother
from media.images import fit

Progress = Callable[[int, int], None]  # (frames done, frames in all)
# what messages call the options: demo.py's flags; the web page passes its own controls' names
FLAG_NAMES = {'driving': '--driving_video', 'best_frame': '--best_frame', 'find_best_frame': '--find_best_frame',
              'crop_source': '--crop_source', 'paste_back': '--paste_back'}


@dataclass
class PhotoOptions:
    relative: bool = True  # motion relative to the initial driving frame (Sec. 3.5), else absolute
    adapt_scale: bool = False  # scale the motion by the keypoint hull-area ratio
    fit: str = 'resize'  # images.FITS: how the photo and driving frames reach the model's size
    crop_source: bool = False  # animate a square crop around the largest face of the photo
    paste_back: bool = False  # with crop_source: blend each frame back into the full photo
    detector: str = 'haar'  # face detector for crop_source: haar | face_alignment
    increase: float = 0.1  # crop margin, fraction of the face box per side
    feather: float = 0.1  # paste-back blend width, fraction of the crop side
    best_frame: Optional[int] = None  # index of the initial driving frame
    find_best_frame: bool = False  # the initial frame whose face landmarks match the source best
    audio: bool = True  # copy the driving video's audio into the result and preview
    smooth: Optional[KeypointSmoother] = None  # steadies the driving keypoints (engine.smoothing)

    def check(self, names: Dict[str, str] = FLAG_NAMES) -> None:
        """Options that exclude each other: ValueError naming them as `names` does."""
        if self.paste_back and not self.crop_source:
            raise ValueError('%s needs %s (it pastes the animated face crop back)'
                             % (names['paste_back'], names['crop_source']))
        if self.find_best_frame and self.best_frame is not None:
            raise ValueError('%s and %s exclude each other' % (names['find_best_frame'], names['best_frame']))


def check_driving(video, options: PhotoOptions, names: Dict[str, str] = FLAG_NAMES) -> None:
    """A driving video with frames, and best_frame within them; messages name the options as
    `names` does."""
    if video.num_frames < 1:
        raise ValueError('%s: %s has no frames' % (names['driving'], video.path))
    if options.best_frame is not None and not 0 <= options.best_frame < video.num_frames:
        raise ValueError('%s: %d is outside 0..%d (%s has %d frames)'
                         % (names['best_frame'], options.best_frame, video.num_frames - 1, video.path,
                            video.num_frames))


def prepare_source(photo: np.ndarray, size, options: PhotoOptions, device: str = 'cpu', what: str = 'source image'):
    """(source at the model's size, face.CropGeometry or None) from the photo."""
    if not options.crop_source:
        return fit(photo, size, options.fit), None
    from analysis import face
    detector = face.make_detector(options.detector, device=device)
    box = face.find_face(photo, detector, what=what)
    return face.crop_face(photo, box, out_size=tuple(size), increase=options.increase)


def initial_frame(video, source: np.ndarray, size, options: PhotoOptions, landmarker=None,
                  progress: bool = False) -> Optional[np.ndarray]:
    """The driving frame relative motion starts from: best_frame, the find_best_frame match, or
    None (the first frame). Animating forward and backward from frame i, as the original did,
    gives every frame the keypoints of frame i as initial ones: one forward pass with them is the same."""
    if options.best_frame is None and not options.find_best_frame:
        return None
    index = options.best_frame
    if index is None:
        from analysis import face
        landmarker = landmarker or face.FaceLandmarker()
        landmarks = face.landmarks_for_frames((fit(f, size, options.fit) for f in video), landmarker=landmarker,
                                              progress=progress)
        index = face.find_best_frame(landmarker(source), landmarks)
        print('best frame: %d' % index, file=sys.stderr)
    return fit(video.read([index])[0], size, options.fit)


def animate_photo(engine, photo: np.ndarray, video, result: str, options: PhotoOptions,
                  preview: Optional[str] = None, landmarker=None, progress: Optional[Progress] = None,
                  device: str = 'cpu', names: Dict[str, str] = FLAG_NAMES) -> str:
    """Animate `photo` (uint8 (H, W, 3)) by `video` (a video_io.VideoSource) into `result` (and the
    `preview`); the caller has checked the output paths (outputs.check_outputs). Returns `result`.
    `names`: what messages call the options (demo.py's flags by default)."""
    from analysis import face
    from media.video_io import VideoWriter, copy_audio, has_audio

    options.check(names)
    check_driving(video, options, names)
    size = engine.frame_shape
    source, geometry = prepare_source(photo, size, options, device)
    initial = initial_frame(video, source, size, options, landmarker, progress=progress is not None)
    engine.set_source(source)
    driving = (fit(frame, size, options.fit) for frame in video)
    pairs = engine.animate(driving, relative=options.relative, adapt_scale=options.adapt_scale,
                           initial_frame=initial, with_inputs=True, smooth=options.smooth)
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(VideoWriter(result, fps=video.info.fps))
        side = stack.enter_context(VideoWriter(preview, fps=video.info.fps)) if preview else None
        for done, (driven, frame) in enumerate(pairs, start=1):
            if side is not None:
                side.write(np.concatenate([source, driven, frame], axis=1))
            writer.write(face.paste_back(photo, frame, geometry, feather=options.feather)
                         if options.paste_back else frame)
            if progress is not None:
                progress(done, video.num_frames)
    if options.audio and has_audio(video.path):
        for path in (result, preview):
            if path is not None and os.path.splitext(path)[1].lower() not in ('.gif', '.png'):
                copy_audio(video.path, path)
    return result
