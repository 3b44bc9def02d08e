#!/usr/bin/env bash
# Animate one photo with one driving video through a running app.py, with curl only (Gradio's
# REST API: upload, call /animate, read the result event, download). See docs/web.md.
#
#   bash docs/examples/animate_curl.sh http://127.0.0.1:7860 photo.png driving.mp4 result.mp4
set -euo pipefail
server=${1%/} photo=$2 driving=$3 result=$4

# 1. upload both files: the answer is a JSON list of the server's paths for them
paths=$(curl -sf -F "files=@$photo" -F "files=@$driving" "$server/gradio_api/upload")
source_path=$(echo "$paths" | cut -d'"' -f2)
driving_path=$(echo "$paths" | cut -d'"' -f4)
file() { echo "{\"path\": \"$1\", \"meta\": {\"_type\": \"gradio.FileData\"}}"; }

# 2. call /animate with the Animate tab's inputs, in order: source, driving, relative motion,
#    adapt scale, fit, initial frame, frame number, crop the face, paste back, face detector,
#    config, checkpoint, uploaded checkpoint, precision, steady keypoints; the answer holds an event id
event=$(curl -sf -X POST "$server/gradio_api/call/animate" -H 'Content-Type: application/json' -d "{\"data\": [
  $(file "$source_path"), $(file "$driving_path"), true, false, \"resize\", \"first frame\", 0,
  false, false, \"haar\", \"shapes-64.yaml\", \"shapes-64.pth.tar\", null, \"auto\", false]}")
event_id=$(echo "$event" | cut -d'"' -f4)

# 3. the result: server-sent events ending in 'event: complete' (data: result, preview, summary)
#    or 'event: error' (data: the page's one-line message)
answer=$(curl -sfN "$server/gradio_api/call/animate/$event_id")
if ! echo "$answer" | grep -q '^event: complete'; then
  echo "animate_curl.sh: $(echo "$answer" | grep '^data:' | cut -d'"' -f4)" >&2
  exit 1
fi
url=$(echo "$answer" | grep '^data:' | grep -o '"url": "[^"]*"' | head -1 | cut -d'"' -f4)

# 4. download the result video
curl -sf -o "$result" "$url"
echo "$result: $(echo "$answer" | grep '^data:' | grep -o '"[0-9]* frames in [^"]*"')"
