# Entry points for a fresh machine (see README): `make demo`, `make test`, and `make app`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-test demo test app web gpu-check

install:
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt

# the optional extras the tests exercise (web app, ONNX runtime, face tools, evaluation networks;
# see requirements-test.txt) and the in-browser page
install-test: install web
	$(PIP) install -r requirements-test.txt
	$(PIP) install --no-deps face-alignment==1.5.0

# animate the shipped source image with the shipped driving video (embedded default model)
demo: install
	$(PYTHON) demo.py --config config/shapes-64.yaml --checkpoint checkpoints/shapes-64.pth.tar \
		--source_image assets/shapes-source.png --driving_video assets/shapes-driving.mp4 \
		--result_video result.mp4 --preview result-preview.mp4 --relative --device cpu --overwrite

test: install-test
	$(PYTHON) -m pytest -q -rs tests

# the web page on http://127.0.0.1:7860 (python app.py --help for host, port and limits)
app: install
	$(PIP) install -r requirements-app.txt
	$(PYTHON) app.py

# the CUDA paths (precisions, resume, DDP, torchrun, engine against the CPU, memory, export) in
# under 10 minutes on one GPU; without CUDA it runs its CPU half (docs/gpu.md)
gpu-check:
	$(PYTHON) bench/gpu_check.py

# the in-browser page (web/, served by app.py at /web/ or by any static host with the COOP/COEP
# headers of docs/web.md): onnxruntime-web at the version pinned in web/package-lock.json, its
# files copied next to the page (web/vendor/), and the samples (web/samples/). The embedded model's
# export, web/models/shapes-64/, is in the repository; after retraining the embedded default, write
# it again with:
#   python export.py --config config/shapes-64.yaml --checkpoint checkpoints/shapes-64.pth.tar \
#       --out web/models/shapes-64 --overwrite
ORT_DIST = web/node_modules/onnxruntime-web/dist
web:
	cd web && npm ci --no-audit --no-fund --ignore-scripts
	mkdir -p web/vendor web/samples
	cp $(ORT_DIST)/ort.min.mjs $(ORT_DIST)/ort-wasm-simd-threaded.jsep.mjs $(ORT_DIST)/ort-wasm-simd-threaded.jsep.wasm web/vendor/
	cp assets/shapes-source.png assets/shapes-driving.mp4 web/samples/
