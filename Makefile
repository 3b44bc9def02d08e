# Entry points for a fresh machine (see README): `make demo`, `make test`, and `make app`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-test demo test app

install:
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt

# the optional extras the tests exercise (web app, ONNX runtime, face tools, evaluation networks):
# see requirements-test.txt
install-test: install
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
