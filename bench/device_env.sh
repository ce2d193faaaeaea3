# Source this on the lent GPU machine before anything that needs SGLang 0.5.17.
#   source bench/device_env.sh
# A call that carries .device installs SGLang once per machine (.device/env.sh) and keeps a copy
# of its environment script in /tmp; a later call on the same warm machine that does not carry
# .device (the carry of a call is removed before the next one) sources that copy.
if [ -f .device/env.sh ]; then
  cp .device/env.sh /tmp/device-env.sh
  source .device/env.sh
elif [ -f /tmp/device-env.sh ] && [ -f /tmp/site/.installed ]; then
  source /tmp/device-env.sh
else
  echo "SGLang is not on this machine: carry .device in this call (or in an earlier call on the same warm machine)" >&2
  return 1 2>/dev/null || exit 1
fi
