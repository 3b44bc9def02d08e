"""Start-up of a fresh process on demo.py's path, stage by stage (wall and CPU seconds).

    python bench/startup_stages.py --config config/vox-256.yaml --checkpoint vox-cpk.pth.tar \\
        --source_image photo.png --driving_video driving.mp4 --precision bf16

Stages: the imports demo.py makes before parsing its arguments (torch, numpy, the project), the
checkpoint read with the networks built and the inference engine made, the source image read and
the clip opened, the source's keypoints and encoding, then the first two batches of 4 frames (the
first one carries the one-off kernel set-up). Nothing but the standard library is imported before
the first stage, so the import time is the real one. bench/bench_animate.py --demo_frames N
--startup runs this on its own inputs.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    marks = [(time.perf_counter(), time.process_time())]

    def stage(name: str):
        marks.append((time.perf_counter(), time.process_time()))
        print('  %-38s wall %6.3f s  cpu %6.3f s' % (name, marks[-1][0] - marks[-2][0], marks[-1][1] - marks[-2][1]),
              flush=True)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=None, help="model config (default: the checkpoint's own)")
    p.add_argument('--checkpoint', required=True, help='weights')
    p.add_argument('--source_image', required=True, help='the image to animate')
    p.add_argument('--driving_video', required=True, help='a clip of at least 8 frames')
    p.add_argument('--precision', default='auto', help='engine precision (default: %(default)s)')
    p.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: cuda when available)')
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    import demo  # noqa: F401  (what demo.py imports before it parses its arguments)
    from media.images import read_image
    from engine.torch_engine import AnimationEngine  # (demo.py imports the engine once its arguments are read)
    from media.video_io import open_video
    stage('imports (torch, numpy, the project)')
    engine = AnimationEngine.from_checkpoint(args.config, args.checkpoint, device=args.device,
                                             precision=args.precision, batch_size=4)
    stage('checkpoint, networks, engine (%s)' % engine.precision)
    photo = read_image(args.source_image)
    frames = iter(open_video(args.driving_video))
    stage('source read, clip opened')
    engine.set_source(photo)
    stage('source keypoints + encoding')
    outputs = engine.animate(frames)
    next(outputs)
    stage('first batch of 4 frames')
    for _ in range(4):
        next(outputs)
    stage('second batch of 4 frames')
    print('  %-38s wall %6.3f s  cpu %6.3f s' % ('total', marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
