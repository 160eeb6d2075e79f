# Sourced first in every command on the remote GPU host (`. .device/env.sh`): installs the Vulkan
# loader, quiets Mesa's device-select layer, reassembles a staged model (benches/device/prepare.sh
# copies it to .device/). Only the parts model.a? are joined and removed: a wider glob would
# delete the model.gguf just made, or truncate it when sourced a second time.
for f in .device/gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export NODEVICE_SELECT=1 REVIVE_CACHE=/root/revive-cache
mkdir -p "$REVIVE_CACHE"
if ls "$REVIVE_CACHE"/model.a? >/dev/null 2>&1; then
  cat "$REVIVE_CACHE"/model.a? > "$REVIVE_CACHE/model.gguf" && rm -f "$REVIVE_CACHE"/model.a?
fi
if [ -f "$REVIVE_CACHE/model.gguf" ] && [ -f .device/bin/model.sha256 ]; then
  if [ "$(sha256sum "$REVIVE_CACHE/model.gguf" | cut -d' ' -f1)" = "$(cat .device/bin/model.sha256)" ]; then
    echo "model: $REVIVE_CACHE/model.gguf (sha256 ok)"
  else
    echo "model: $REVIVE_CACHE/model.gguf has the WRONG sha256: a part is missing; stage again" >&2
  fi
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true
