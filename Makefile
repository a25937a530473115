# Build and install plughostd, plughostctl, the plugin host, the C header and pkg-config file, the
# systemd unit, man pages and shell completions.
#
#   make                                   # cargo build --release (PROFILE=dev: a debug build)
#   sudo make install                      # into /usr/local
#   make install PREFIX=/usr DESTDIR=/tmp/pkg
#   sudo make uninstall
#
# plughostd looks for the host in ../libexec/plughost/ relative to itself, and (compiled in) in
# $(PREFIX)/libexec/plughost/: the PREFIX given to `make` and to `make install` must agree.

PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec
INCLUDEDIR ?= $(PREFIX)/include
DATADIR    ?= $(PREFIX)/share
DOCDIR     ?= $(DATADIR)/doc/plughost
PKGCONFIGDIR ?= $(DATADIR)/pkgconfig
UNITDIR    ?= $(PREFIX)/lib/systemd/system
CARGO      ?= cargo
TARGET_DIR ?= target
# PROFILE=dev installs a debug build (CI's install check reuses the test build that way).
PROFILE    ?= release
RELEASE    := $(TARGET_DIR)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

INSTALL      ?= install
INSTALL_PROGRAM = $(INSTALL) -m 755
INSTALL_DATA    = $(INSTALL) -m 644

.PHONY: all build install uninstall

all: build

# PLUGHOST_PREFIX is compiled into plughostd (the host's last-resort location).
build:
	PLUGHOST_PREFIX='$(PREFIX)' $(CARGO) build --profile '$(PROFILE)' --target-dir '$(TARGET_DIR)' \
		-p plughost-service -p plughost-host

# `sudo make install` after `make` must not need cargo (root's PATH often lacks it): it builds only
# when nothing is built yet.
BUILT := $(wildcard $(RELEASE)/plughostd $(RELEASE)/plughostctl $(RELEASE)/plughost-host)
install: $(if $(filter 3,$(words $(BUILT))),,build)
	$(INSTALL) -d '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(LIBEXECDIR)/plughost' \
		'$(DESTDIR)$(INCLUDEDIR)/plughost' '$(DESTDIR)$(PKGCONFIGDIR)' \
		'$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(DOCDIR)'
	$(INSTALL_PROGRAM) '$(RELEASE)/plughostd' '$(RELEASE)/plughostctl' '$(DESTDIR)$(BINDIR)/'
	$(INSTALL_PROGRAM) '$(RELEASE)/plughost-host' '$(DESTDIR)$(LIBEXECDIR)/plughost/'
	$(INSTALL_DATA) include/plughost/plugin_api.h '$(DESTDIR)$(INCLUDEDIR)/plughost/'
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
		-e 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
		include/plughost/plughost.pc.in > '$(DESTDIR)$(PKGCONFIGDIR)/plughost.pc'
	chmod 644 '$(DESTDIR)$(PKGCONFIGDIR)/plughost.pc'
	sed -e 's|/usr/local/bin/|$(BINDIR)/|g' -e 's|/usr/local/share/doc/plughost/|$(DOCDIR)/|g' \
		crates/service/plughostd.service > '$(DESTDIR)$(UNITDIR)/plughostd.service'
	chmod 644 '$(DESTDIR)$(UNITDIR)/plughostd.service'
	$(INSTALL_DATA) README.md SECURITY.md '$(DESTDIR)$(DOCDIR)/'
	$(INSTALL_DATA) crates/service/README.md '$(DESTDIR)$(DOCDIR)/plughostd.md'
	'$(RELEASE)/plughostctl' __generate-docs '$(DESTDIR)$(DATADIR)'
	'$(RELEASE)/plughostd' __generate-docs '$(DESTDIR)$(DATADIR)'

uninstall:
	rm -f '$(DESTDIR)$(BINDIR)/plughostd' '$(DESTDIR)$(BINDIR)/plughostctl' \
		'$(DESTDIR)$(LIBEXECDIR)/plughost/plughost-host' \
		'$(DESTDIR)$(INCLUDEDIR)/plughost/plugin_api.h' '$(DESTDIR)$(PKGCONFIGDIR)/plughost.pc' \
		'$(DESTDIR)$(UNITDIR)/plughostd.service' \
		'$(DESTDIR)$(DATADIR)'/man/man1/plughostctl*.1 '$(DESTDIR)$(DATADIR)'/man/man8/plughostd*.8 \
		'$(DESTDIR)$(DATADIR)'/bash-completion/completions/plughostctl \
		'$(DESTDIR)$(DATADIR)'/bash-completion/completions/plughostd \
		'$(DESTDIR)$(DATADIR)'/zsh/site-functions/_plughostctl \
		'$(DESTDIR)$(DATADIR)'/zsh/site-functions/_plughostd \
		'$(DESTDIR)$(DATADIR)'/fish/vendor_completions.d/plughostctl.fish \
		'$(DESTDIR)$(DATADIR)'/fish/vendor_completions.d/plughostd.fish
	rm -rf '$(DESTDIR)$(DOCDIR)'
	-rmdir '$(DESTDIR)$(LIBEXECDIR)/plughost' '$(DESTDIR)$(INCLUDEDIR)/plughost'
