"""Animate every photo of a folder with one driving video, through a running app.py (the page's
Animate endpoint, /animate) with gradio_client. See docs/web.md, "The page's API for scripts".

    python app.py &                                                  # http://127.0.0.1:7860
    python docs/examples/animate_folder.py --photos photos/ --driving driving.mp4 --out results/
    python docs/examples/animate_folder.py --server http://host:7860/ --photos photos/ --driving d.mp4 \\
        --out results/ --adapt_scale --fit crop --preview

Each photo NAME.png gives results/NAME.mp4 (and results/NAME-preview.mp4 with --preview: source |
driving | result). A photo the server refuses is reported with the page's one-line message and the
others go on; the exit status is 1 when any failed. Needs gradio_client (installed with gradio).
"""
import argparse
import shutil
import sys
from pathlib import Path

PHOTO_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--server', default='http://127.0.0.1:7860/', help='the running app.py')
    p.add_argument('--photos', required=True, help='folder of source images')
    p.add_argument('--driving', required=True, help='the driving video')
    p.add_argument('--out', required=True, help='folder for the results (created)')
    p.add_argument('--absolute', action='store_true', help='absolute motion instead of relative')
    p.add_argument('--adapt_scale', action='store_true', help='scale the motion by the keypoints\' hull areas')
    p.add_argument('--fit', default='resize', choices=('resize', 'crop', 'none'), help='how photos reach the model size')
    p.add_argument('--config', default='shapes-64.yaml', help='a config name from the server\'s config/ list')
    p.add_argument('--checkpoint', default='shapes-64.pth.tar', help='a checkpoint name from the server\'s list')
    p.add_argument('--precision', default='auto', help='auto, fp32 or bf16 (fp16 on CUDA servers)')
    p.add_argument('--preview', action='store_true', help='also keep the side-by-side preview')
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from gradio_client import Client, handle_file
    except ImportError:
        print('animate_folder.py: error: needs gradio_client (pip install gradio_client)', file=sys.stderr)
        return 1
    folder, driving, out = Path(args.photos), Path(args.driving), Path(args.out)
    if not folder.is_dir():
        print('animate_folder.py: error: --photos: %s is not a folder' % folder, file=sys.stderr)
        return 1
    if not driving.is_file():
        print('animate_folder.py: error: --driving: %s not found' % driving, file=sys.stderr)
        return 1
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        print('animate_folder.py: error: --photos: no %s files in %s' % ('/'.join(PHOTO_SUFFIXES), folder),
              file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    client = Client(args.server, verbose=False)
    failed = 0
    for photo in photos:
        try:
            result, preview, summary = client.predict(
                source=handle_file(str(photo)), driving=handle_file(str(driving)),
                relative=not args.absolute, adapt=args.adapt_scale, fitting=args.fit, initial='first frame', best=0,
                crop=False, paste=False, detector='haar', config=args.config, checkpoint=args.checkpoint,
                upload=None, precision=args.precision, api_name='/animate')
        except Exception as e:  # gradio_client.exceptions.AppError carries the page's message
            print('%s: %s' % (photo.name, str(e).splitlines()[0] if str(e) else type(e).__name__), file=sys.stderr)
            failed += 1
            continue
        shutil.copyfile(result, out / (photo.stem + '.mp4'))
        if args.preview:
            shutil.copyfile(preview, out / (photo.stem + '-preview.mp4'))
        print('%s: %s -> %s' % (photo.name, summary, out / (photo.stem + '.mp4')))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
