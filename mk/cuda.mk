# mk/cuda.mk: the CUDA backend (kernels/cuda/*.cu + *.c -> $(O)/libqdcuda.a) and its GPU
# test and benchmark (`make gpu-tools`).  Only active when nvcc is found and CUDA != 0.
# Then the engine is compiled with -DQD_HAVE_CUDA (`--backend cuda` in forward.c), the CUDA
# objects go into libqdengine.a too, and everything linking the engine (quantd, the tests)
# links the CUDA runtime statically.  Without nvcc nothing here changes the build.
#
#   make gpu-engine  $(O)/qd-engine: `run`, `bench` and `synth` without the daemon's
#                    libraries (protobuf-c, liburing, systemd), for GPU machines lacking them
#   make gpu-tools   $(O)/tests/gpu/test-cuda-mmv, test-cuda-ll, $(O)/bench/bench-cuda-mmv and
#                    $(O)/bench/bench-persist (sm_90a only: bulk copies),
#                    $(O)/bench/bench-pdl (sm_90a only: griddepcontrol)
#   make test-gpu    builds and runs the GPU test (every test SKIPs without a GPU) and
#                    the host-only layout check, which needs nvcc but no GPU (`make test`
#                    runs that check too)
#   CUDA_HOME        CUDA installation (default: two levels above nvcc)
#   CUNIT_CFLAGS / CUNIT_LIBS   where CUnit lives if not in the system paths
#
# The binaries link the CUDA runtime statically, so they only need the driver at run time.

.PHONY: gpu-tools test-gpu gpu-engine

ifeq ($(HAVE_CUDA),1)

CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(shell command -v $(NVCC))))
CUDA_GENCODE := -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=sm_80 \
	-gencode arch=compute_89,code=sm_89
NVCCFLAGS ?= -O3
NVCC_ALL := $(NVCCFLAGS) -std=c++17 $(CUDA_GENCODE) -I. -MMD -MP \
	-Xcompiler -Wall,-Wextra,-Wno-unused-parameter
CUDA_LDLIBS := -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++ -lm -pthread
CUNIT_LIBS ?= -lcunit

CUDA_SRC := $(wildcard kernels/cuda/*.cu)
CUDA_CSRC := $(wildcard kernels/cuda/*.c)
CUDA_OBJ := $(CUDA_SRC:%.cu=$(O)/%.o) $(CUDA_CSRC:%.c=$(O)/%.o)

# The engine sees the backend (forward.c, the CLI, tests/test-backend.c, test-fused.c) and carries it.
CFLAGS_ALL += -DQD_HAVE_CUDA
ENGINE_OBJ += $(CUDA_OBJ)
LDLIBS += $(CUDA_LDLIBS)
GPU_TEST_BIN := $(O)/tests/gpu/test-cuda-mmv
GPU_TEST_LL := $(O)/tests/gpu/test-cuda-ll
GPU_BENCH_BIN := $(O)/bench/bench-cuda-mmv
GPU_CHECK_BIN := $(O)/tests/gpu/check-cuda-layout
# The layout check needs no GPU: `make test` runs it wherever nvcc is (CI included).
TEST_BIN += $(GPU_CHECK_BIN)

# The decode products' file (matmul.cu) alone: ptxas's register-usage level 10 (of 0..10,
# default 5; a beta option of ptxas, kept for what it measured).  The one-token walks run
# at their launch bounds' register caps either way; the level changes ptxas's schedule,
# which decides where their weight loads sit (bench/NOTES-gpu.md, sessions 28-29).  H200,
# 7B batch 1, against level 5 (session 37, interleaved rounds in three calls): Q4_K +0.7%,
# +0.9% (+1.2% with every file at 10), Q4_K_M +0.8%, Q8_0 +0.1%, Q4_0 +0.2%, F16 -0.1%, Q4_1
# -0.6%; prefill, batch 8 and 70B Q4_0 within 0.6%.  Levels 0, 2, 7, 8 and 9 measured too.
# A ptxas without the option (older than CUDA 12's later releases) builds at its default.
# (Expanded once: the probe runs ptxas.)
ifeq ($(origin NVCC_MATMUL),undefined)
NVCC_MATMUL := $(if $(shell $(CUDA_HOME)/bin/ptxas --help 2>/dev/null | grep -e --register-usage-level),\
	-Xptxas -regUsageLevel=10)
endif
$(O)/kernels/cuda/matmul.o: NVCC_FILE = $(NVCC_MATMUL)

# As the C objects' FLAGS_STAMP: changed nvcc flags rebuild the CUDA objects.
NVCC_STAMP := $(O)/.nvflags-$(shell echo '$(NVCC) $(NVCC_ALL) $(NVCC_MATMUL)' | md5sum | cut -c1-12)
$(NVCC_STAMP):
	@mkdir -p $(O) && rm -f $(O)/.nvflags-* && touch $@

$(O)/kernels/cuda/%.o: kernels/cuda/%.cu $(NVCC_STAMP)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  NVCC    $<")
	$(Q)$(NVCC) $(NVCC_ALL) $(NVCC_FILE) -c $< -o $@

$(O)/libqdcuda.a: $(CUDA_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

# The GPU tools need only kernels/types.c from the engine, so they build even while
# the rest of the tree does not.
$(O)/tests/gpu/%.o: tests/gpu/%.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS_ALL) $(CUNIT_CFLAGS) -c $< -o $@

# testutil.o includes CUnit too
$(TESTUTIL_OBJ): CFLAGS_ALL += $(CUNIT_CFLAGS)

$(GPU_TEST_BIN): $(O)/tests/gpu/test-cuda-mmv.o $(TESTUTIL_OBJ) $(O)/kernels/types.o $(O)/libqdcuda.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(CUNIT_LIBS) $(CUDA_LDLIBS)

$(GPU_TEST_LL): $(O)/tests/gpu/test-cuda-ll.o $(TESTUTIL_OBJ) $(O)/kernels/types.o $(O)/libqdcuda.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(CUNIT_LIBS) $(CUDA_LDLIBS)

$(GPU_BENCH_BIN): $(O)/bench/bench-cuda-mmv.o $(O)/kernels/types.o $(O)/libqdcuda.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(CUDA_LDLIBS)

# Standalone sm_90 measurements (each file's comment says what): bench-persist, a
# persistent decode step's mechanics (bulk copies); bench-pdl, the hand-over between the
# kernels of a chain (griddepcontrol).  Only sm_90a code is built.
GPU_SM90_BINS := $(O)/bench/bench-persist $(O)/bench/bench-pdl
$(GPU_SM90_BINS): $(O)/bench/%: bench/%.cu
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  NVCC    $<")
	$(Q)$(NVCC) $(NVCCFLAGS) -std=c++17 -gencode arch=compute_90a,code=sm_90a -MMD -MP \
		-Xcompiler -Wall,-Wextra $< -o $@

# Host code only (layout.cuh's __host__ side); see the file's comment.  It links the CPU
# quantizer to compare the int8 rounding with it, so under SANITIZE=1 its host code is
# sanitized too and it links like the C binaries.
GPU_CHECK_SAN := $(if $(filter 1,$(SANITIZE)),-Xcompiler -fsanitize=address -Xcompiler -fsanitize=undefined \
	-Xcompiler -fno-omit-frame-pointer -Xcompiler -fno-sanitize-recover=undefined)
$(GPU_CHECK_BIN).o: tests/gpu/check-cuda-layout.cu
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  NVCC    $<")
	$(Q)$(NVCC) $(NVCCFLAGS) -std=c++17 -I. -MMD -MP -Xcompiler -Wall,-Wextra,-Wno-unused-parameter \
		$(GPU_CHECK_SAN) -c $< -o $@

$(GPU_CHECK_BIN): $(GPU_CHECK_BIN).o $(O)/kernels/types.o $(O)/kernels/cpu/quant.o $(O)/kernels/cpu/quant_avx2.o \
		$(O)/kernels/cpu/matmul_avx2.o
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(CUDA_LDLIBS)

gpu-tools: $(GPU_TEST_BIN) $(GPU_TEST_LL) $(GPU_BENCH_BIN) $(GPU_CHECK_BIN) $(GPU_SM90_BINS)

GPU_ENGINE_OBJ := $(O)/tests/gpu/engine-main.o $(patsubst %.c,$(O)/%.o,$(wildcard daemon/cli/cmd_run.c \
	daemon/cli/cmd_bench.c daemon/cli/cmd_synth.c daemon/cli/cli_util.c))
$(O)/qd-engine: $(GPU_ENGINE_OBJ) $(O)/libqdengine.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

gpu-engine: $(O)/qd-engine

test-gpu: $(GPU_TEST_BIN) $(GPU_TEST_LL) $(GPU_CHECK_BIN)
	$(Q)$(GPU_CHECK_BIN) && $(GPU_TEST_BIN) && $(GPU_TEST_LL)

-include $(CUDA_OBJ:.o=.d) $(GPU_ENGINE_OBJ:.o=.d) $(O)/tests/gpu/test-cuda-mmv.d $(O)/tests/gpu/test-cuda-ll.d $(O)/bench/bench-cuda-mmv.d $(GPU_CHECK_BIN).d \
	$(GPU_SM90_BINS:=.d)

else

gpu-tools test-gpu gpu-engine:
	@echo "$@: no nvcc found (or CUDA=0): nothing to build"

endif
