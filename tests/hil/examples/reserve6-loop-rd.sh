# HIL example: reserve6-loop.sh against LIO's own RAM disk (rd_mcp) instead of scst-accel's TCMU
# backstore, the control for the Reserve6 race. reserve6-loop.sh must be staged with --bin:
#
# tests/hil/hil.sh run --out DIR --bin tests/hil/examples/reserve6-loop.sh \
#   --bin "$(command -v iscsi-test-cu)" --bin tests/hil/scenarios/common.sh \
#   -- tests/hil/examples/reserve6-loop-rd.sh
RESERVE6_BACKSTORE=rd
. ./reserve6-loop.sh
