# mk/daemon.mk: the daemon (proto/, daemon/*.c), libquantd, quantctl, their tests,
# bench-ipc and install.  Included by the top Makefile after its variables.
#
# For the lead: link $(DAEMON_OBJ) into $(O)/quantd and add $(DAEMON_LIBS) to its libraries;
# daemon/cli/main.c dispatches "serve" to cmd_serve() (daemon/serve.c).

# First rule of this file, so that plain `make` still means `all` (this file is included
# before the top Makefile's own rules).
.PHONY: all daemon-all bench-ipc
all: daemon-all

PROTOC_C ?= protoc-c
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
QD_VERSION ?= 0.1.0
QD_SOVERSION := 0

PROTO_GEN := $(O)/proto/quantd.pb-c.c $(O)/proto/quantd.pb-c.h
PROTO_OBJ := $(O)/proto/quantd.pb-c.o $(O)/proto/ring.o $(O)/proto/frame.o

DAEMON_SRC := $(wildcard daemon/*.c)
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(O)/%.o) $(PROTO_OBJ)
DAEMON_LIBS := -lprotobuf-c -luring -lsystemd

CLIENT_SRC := client/libquantd.c proto/ring.c proto/frame.c
CLIENT_OBJ := $(O)/client/libquantd.o $(O)/proto/ring.o $(O)/proto/frame.o $(O)/proto/quantd.pb-c.o
CLIENT_PIC := $(CLIENT_SRC:%.c=$(O)/pic/%.o) $(O)/pic/proto/quantd.pb-c.o

DAEMON_TEST_SRC := $(wildcard tests/daemon/test-*.c)
DAEMON_TEST_BIN := $(DAEMON_TEST_SRC:%.c=$(O)/%)
TEST_BIN += $(DAEMON_TEST_BIN)
# The end-to-end suites' shared daemon harness (start/stop, notify, raw sockets).
DAEMON_HARNESS_OBJ := $(O)/tests/daemon/harness.o

# Objects that include the generated header find it through -I$(O) and wait for it.
QD_GEN_USERS := $(DAEMON_OBJ) $(CLIENT_OBJ) $(CLIENT_PIC) $(O)/client/quantctl.o \
	$(DAEMON_TEST_SRC:%.c=$(O)/%.o) $(DAEMON_HARNESS_OBJ) $(O)/tests/daemon/serve-main.o \
	$(O)/bench/bench-ipc.o
$(QD_GEN_USERS): CFLAGS_ALL += -I$(O)
$(QD_GEN_USERS): | $(O)/proto/quantd.pb-c.h

daemon-all: $(O)/libquantd.a $(O)/libquantd.so $(O)/quantctl $(O)/quantd.pc

$(O)/proto/quantd.pb-c.h: $(O)/proto/quantd.pb-c.c
$(O)/proto/quantd.pb-c.c: proto/quantd.proto
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  PROTOC  $<")
	$(Q)$(PROTOC_C) --proto_path=proto --c_out=$(O)/proto $<

$(O)/proto/quantd.pb-c.o: $(O)/proto/quantd.pb-c.c
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS_ALL) -c $< -o $@

$(O)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $< (PIC)")
	$(Q)$(CC) $(CFLAGS_ALL) -fPIC -fvisibility=hidden -DQD_BUILDING_LIB -c $< -o $@
$(O)/pic/proto/quantd.pb-c.o: $(O)/proto/quantd.pb-c.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS_ALL) -fPIC -fvisibility=hidden -c $< -o $@

$(O)/libquantd.a: $(CLIENT_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

# Only the qd_* API is exported (QD_API in quantd.h; everything else is hidden).
$(O)/libquantd.so: $(CLIENT_PIC)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -shared -Wl,-soname,libquantd.so.$(QD_SOVERSION) -o $@ $^ -lprotobuf-c

$(O)/quantd.pc: client/quantd.pc.in
	@mkdir -p $(dir $@)
	$(Q)sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(QD_VERSION)|g' $< > $@

$(O)/quantctl: $(O)/client/quantctl.o $(O)/libquantd.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ -lprotobuf-c

# A `quantd serve` of our own for the end-to-end tests, independent of daemon/cli/main.c.
$(O)/tests/daemon/qd-serve: $(O)/tests/daemon/serve-main.o $(DAEMON_OBJ) $(O)/libqdengine.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(DAEMON_LIBS) $(LDLIBS)

$(O)/tests/daemon/test-ring: $(O)/tests/daemon/test-ring.o $(TESTUTIL_OBJ) \
		$(O)/daemon/shm.o $(PROTO_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ -lcunit -lprotobuf-c $(LDLIBS)

# qd-serve and quantctl are real prerequisites (not order-only): the test runs them, so a
# stale one would test old code.
$(O)/tests/daemon/test-e2e: $(O)/tests/daemon/test-e2e.o $(DAEMON_HARNESS_OBJ) $(TESTUTIL_OBJ) \
		$(O)/libquantd.a $(O)/tests/daemon/qd-serve $(O)/quantctl
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $(filter %.o %.a,$^) -lcunit -lprotobuf-c $(LDLIBS)

$(O)/tests/daemon/test-load: $(O)/tests/daemon/test-load.o $(DAEMON_HARNESS_OBJ) $(TESTUTIL_OBJ) \
		$(O)/libquantd.a $(O)/tests/daemon/qd-serve
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $(filter %.o %.a,$^) -lcunit -lprotobuf-c $(LDLIBS)

$(O)/bench/bench-ipc: $(O)/bench/bench-ipc.o $(O)/daemon/shm.o $(PROTO_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ -lprotobuf-c $(LDLIBS)

bench-ipc: $(O)/bench/bench-ipc
	$(Q)mkdir -p bench/results
	$(Q)$(O)/bench/bench-ipc | tee bench/results/ipc-$$(date +%Y%m%d-%H%M%S).txt

install: $(O)/quantd $(O)/libquantd.a $(O)/libquantd.so $(O)/quantctl
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) \
		$(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
		$(DESTDIR)$(TMPFILESDIR)
	install -m 0755 $(O)/quantd $(DESTDIR)$(BINDIR)/quantd
	install -m 0755 $(O)/quantctl $(DESTDIR)$(BINDIR)/quantctl
	install -m 0644 $(O)/libquantd.a $(DESTDIR)$(LIBDIR)/libquantd.a
	install -m 0755 $(O)/libquantd.so $(DESTDIR)$(LIBDIR)/libquantd.so.$(QD_VERSION)
	ln -sf libquantd.so.$(QD_VERSION) $(DESTDIR)$(LIBDIR)/libquantd.so.$(QD_SOVERSION)
	ln -sf libquantd.so.$(QD_SOVERSION) $(DESTDIR)$(LIBDIR)/libquantd.so
	install -m 0644 client/quantd.h $(DESTDIR)$(INCLUDEDIR)/quantd.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(QD_VERSION)|g' \
		client/quantd.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/quantd.pc
	sed 's|/usr/bin/quantd|$(BINDIR)/quantd|g' systemd/quantd.service \
		> $(DESTDIR)$(UNITDIR)/quantd.service
	install -m 0644 systemd/quantd.socket $(DESTDIR)$(UNITDIR)/quantd.socket
	install -m 0644 systemd/quantd.sysusers $(DESTDIR)$(SYSUSERSDIR)/quantd.conf
	install -m 0644 systemd/quantd.tmpfiles $(DESTDIR)$(TMPFILESDIR)/quantd.conf

-include $(DAEMON_OBJ:.o=.d) $(CLIENT_OBJ:.o=.d) $(CLIENT_PIC:.o=.d) $(O)/client/quantctl.d \
	$(DAEMON_TEST_SRC:%.c=$(O)/%.d) $(DAEMON_HARNESS_OBJ:.o=.d) $(O)/bench/bench-ipc.d \
	$(O)/tests/daemon/serve-main.d
