# quantd: one non-recursive Makefile, out-of-tree build in $(O).
#   make              build/quantd (+ CUDA objects when nvcc is found; CUDA=0 forces off)
#   make test         CUnit suites (fetches the default model first); SANITIZE=1 for ASan+UBSan
#   make model        fetch the default model into models/
#   make bench-cpu    CPU prompt/decode tokens/s for the default model -> bench/results/
#   make V=1          show commands
O ?= build
.DEFAULT_GOAL := all
CC ?= gcc
NVCC ?= nvcc
PREFIX ?= /usr/local

ifeq ($(V),1)
Q :=
else
Q := @
endif

ifneq ($(CUDA),0)
ifneq ($(shell command -v $(NVCC) 2>/dev/null),)
HAVE_CUDA := 1
endif
endif

OPT ?= -O2
CFLAGS_BASE := -std=gnu11 $(OPT) -g -Wall -Wextra -Wshadow -Wno-unused-parameter -pthread \
	-fno-strict-aliasing -D_GNU_SOURCE -I. -MMD -MP
LDLIBS := -lpcre2-8 -lm -pthread
ifeq ($(SANITIZE),1)
OPT := -O1
CFLAGS_BASE += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
O := build-san
endif
CFLAGS_ALL := $(CFLAGS_BASE) $(CFLAGS)
AVX2_FLAGS := -mavx2 -mfma -mf16c

ENGINE_SRC := $(wildcard kernels/*.c kernels/cpu/*.c daemon/engine/*.c)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(O)/%.o)
QUANTD_SRC := $(wildcard daemon/cli/*.c)
QUANTD_OBJ := $(QUANTD_SRC:%.c=$(O)/%.o)
TEST_SRC := $(wildcard tests/test-*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(O)/tests/%)
TESTUTIL_OBJ := $(O)/tests/testutil.o

MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
# The tests' vocabulary-only GGUFs, built from their text form (tests/gen-gguf.c): no
# model-like file is tracked.
TEST_GGUF := $(patsubst tests/data/%.gguf.txt,$(O)/tests/data/%.gguf,$(wildcard tests/data/*.gguf.txt))

# Component makefiles (daemon, client, CUDA) add sources, binaries and TEST_BIN entries.
include $(wildcard mk/*.mk)

.PHONY: all test model eval-data bench-cpu bench-matmul clean install
all: $(O)/quantd

# Objects depend on a stamp named after the compile flags, so changing them (CUDA found or
# not, CFLAGS=...) rebuilds everything instead of linking stale objects.
FLAGS_STAMP := $(O)/.flags-$(shell echo '$(CC) $(CFLAGS_ALL) $(AVX2_FLAGS)' | md5sum | cut -c1-12)
$(FLAGS_STAMP):
	@mkdir -p $(O) && rm -f $(O)/.flags-* && touch $@

$(O)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS_ALL) $(if $(findstring _avx2,$<),$(AVX2_FLAGS)) -c $< -o $@

# The source revision `quantd bench --json` records; the header is rewritten only when the
# revision changes, so only cmd_bench.c recompiles after a commit.
QD_REVISION := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
$(O)/gen/revision.h: FORCE
	@mkdir -p $(dir $@)
	@echo '#define QD_REVISION "$(QD_REVISION)"' | cmp -s - $@ 2>/dev/null || \
		echo '#define QD_REVISION "$(QD_REVISION)"' > $@
$(O)/daemon/cli/cmd_bench.o: $(O)/gen/revision.h
$(O)/daemon/cli/cmd_bench.o: CFLAGS_ALL += -I$(O)/gen
.PHONY: FORCE
FORCE:

$(O)/libqdengine.a: $(ENGINE_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(O)/quantd: $(QUANTD_OBJ) $(DAEMON_OBJ) $(O)/libqdengine.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(DAEMON_LIBS) $(LDLIBS)

$(O)/tests/gen-gguf: $(O)/tests/gen-gguf.o $(O)/libqdengine.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(O)/tests/data/%.gguf: tests/data/%.gguf.txt $(O)/tests/gen-gguf
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  GGUF    $@")
	$(Q)$(O)/tests/gen-gguf build $< $@

$(O)/tests/%: $(O)/tests/%.o $(TESTUTIL_OBJ) $(O)/libqdengine.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ -lcunit $(LDLIBS)

# Public-domain evaluation and calibration text (Jane Austen, Debian's r-cran-janeaustenr).
eval-data:
	$(Q)sh tools/fetch-eval-text.sh

model: $(MODEL)
$(MODEL):
	$(Q)sh tools/fetch-model.sh

# Every suite runs even when one fails; the exit status says whether all passed.
test: $(O)/quantd $(TEST_BIN) $(TEST_GGUF) $(MODEL)
	$(Q)fail=0; for t in $(TEST_BIN); do \
		echo "=== $$t"; QD_BUILD=$(O) QD_MODEL=$(MODEL) $$t || fail=1; \
	done; \
	for t in $(filter %/test-e2e,$(TEST_BIN)); do \
		echo "=== $$t, greedy steps queued ahead on the CPU (QUANTD_STEPS_AHEAD=1)"; \
		QUANTD_STEPS_AHEAD=1 QD_BUILD=$(O) QD_MODEL=$(MODEL) $$t || fail=1; \
	done; \
	if [ $$fail -ne 0 ]; then echo "make test: FAILED"; exit 1; fi; echo "make test: all suites passed"

bench-cpu: $(O)/quantd $(MODEL)
	$(Q)sh bench/bench-cpu.sh $(O)/quantd $(MODEL)

# Kernel-level CPU benchmark: GB/s of weights streamed by kb_matmul per type.
$(O)/bench/bench-matmul: $(O)/bench/bench-matmul.o $(O)/libqdengine.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bench-matmul: $(O)/bench/bench-matmul
	$(Q)$(O)/bench/bench-matmul

clean:
	rm -rf build build-san

-include $(ENGINE_OBJ:.o=.d) $(QUANTD_OBJ:.o=.d) $(TEST_BIN:=.d) $(TESTUTIL_OBJ:.o=.d) $(O)/tests/gen-gguf.d
