# Shared by install-agent.sh and install-aggregator.sh (sourced; they set COMPONENT first).
# Idempotent: a second run with the same inputs changes no file. Into a DESTDIR it creates no
# user, starts nothing and touches nothing outside DESTDIR.

umask 022  # the service user must be able to read the venv and docs, whatever root's umask
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHECKOUT="$(cd "$HERE/.." && pwd)"
USER_NAME=fedge
PREFIX=/opt/fedge
DESTDIR="${DESTDIR:-}"
FROM=""
EXTRAS=""
PYTHON=/usr/bin/python3  # the system's: a pyenv or conda python of root's is not the service's
CONFIG=""
FOLDER=""
SKIP_VENV=0
ENABLE=1
UNINSTALL=0
PURGE=0
CHANGED=0

usage() {
    cat <<EOF
usage: $(basename "$0") [options]
Install the fedge $COMPONENT as the systemd service fedge-$COMPONENT (Debian, Raspberry Pi OS).

  --prefix DIR          where the venv and docs go (default /opt/fedge)
  --destdir DIR         install into a staging root (also: DESTDIR=DIR); no user is created,
                        nothing is started, nothing outside DIR is touched
  --device-folder DIR   a folder written by \`fedge-broker init\` (its config and credentials)
  --config FILE         a $COMPONENT.toml of your own (instead of --device-folder)
  --from PATH           a fedge checkout or wheel to install (default: this checkout)
  --extras LIST         pip extras, e.g. zstd or fleet (bundled datasets for the aggregator)
  --python PATH         the interpreter for the venv (default /usr/bin/python3); the
                        service user must be able to run it
  --skip-venv           do not create or update the venv
  --no-enable           install the unit but do not enable or start it
  --uninstall           remove the unit (and the venv if no other fedge unit uses it);
                        keeps /etc/fedge/$COMPONENT and /var/lib/fedge/$COMPONENT ...
  --purge               ... unless this is given too

A config already at /etc/fedge/$COMPONENT/ is never overwritten: edits survive reinstalls.
EOF
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --prefix) PREFIX="$2"; shift 2 ;;
            --destdir) DESTDIR="$2"; shift 2 ;;
            --device-folder) FOLDER="$2"; shift 2 ;;
            --config) CONFIG="$2"; shift 2 ;;
            --from) FROM="$2"; shift 2 ;;
            --extras) EXTRAS="$2"; shift 2 ;;
            --python) PYTHON="$2"; shift 2 ;;
            --skip-venv) SKIP_VENV=1; shift ;;
            --no-enable) ENABLE=0; shift ;;
            --uninstall) UNINSTALL=1; shift ;;
            --purge) PURGE=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) echo "$(basename "$0"): unknown option $1" >&2; usage >&2; exit 2 ;;
        esac
    done
    if [ -n "$CONFIG" ] && [ -n "$FOLDER" ]; then
        die "give --config or --device-folder, not both"
    fi
    if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
        die "--purge goes with --uninstall"
    fi
    case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
    if [ -n "$DESTDIR" ]; then
        mkdir -p "$DESTDIR"
        DESTDIR="$(cd "$DESTDIR" && pwd)"
    elif [ "$(id -u)" != 0 ]; then
        die "run as root (or with --destdir DIR to stage into a directory)"
    fi
    FROM="${FROM:-$CHECKOUT}"
    UNIT="fedge-$COMPONENT.service"
    ETC="$DESTDIR/etc/fedge/$COMPONENT"
    STATE="$DESTDIR/var/lib/fedge/$COMPONENT"
    VENV="$DESTDIR$PREFIX/venv"
    DOCS="$DESTDIR$PREFIX/share/doc/fedge"
    UNITS="$DESTDIR/etc/systemd/system"
    SYSUSERS="$DESTDIR/etc/sysusers.d/fedge.conf"
}

die() { echo "$(basename "$0"): $*" >&2; exit 2; }
say() { echo "fedge-$COMPONENT: $*"; }
live() { [ -z "$DESTDIR" ]; }
booted() { live && [ -d /run/systemd/system ]; }  # sd_booted(3)

# install_file SRC DST MODE: copy when missing or different; keeps the tree unchanged on reruns.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        chmod "$3" "$2"
        return 0
    fi
    install -D -m "$3" "$1" "$2"
    CHANGED=1
}

owned() {  # owned USER:GROUP PATH...: only on the live system (a DESTDIR has no such user)
    local who="$1"; shift
    if live; then chown "$who" "$@"; fi
}

other_component() { [ "$COMPONENT" = agent ] && echo aggregator || echo agent; }

# -- install -------------------------------------------------------------------------------

install_user() {
    install_file "$HERE/fedge.sysusers" "$SYSUSERS" 0644
    if ! live; then
        say "DESTDIR: user $USER_NAME not created (systemd-sysusers makes it from $SYSUSERS at boot)"
    elif id "$USER_NAME" >/dev/null 2>&1; then
        :
    elif command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$SYSUSERS"
        say "created user $USER_NAME"
    else
        useradd --system --user-group --home-dir /var/lib/fedge --no-create-home \
            --shell /usr/sbin/nologin "$USER_NAME"
        say "created user $USER_NAME"
    fi
}

source_stamp() {  # what the venv was built from: a wheel's hash, or a tree's files' hashes
    if [ -f "$FROM" ]; then
        sha256sum < "$FROM" | cut -d' ' -f1
    else
        (cd "$FROM" && find pyproject.toml README.md fedge agent aggregator broker fleet \
            -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z \
            | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
    fi
    echo "extras=$EXTRAS"
}

python_line() { echo "python=$PYTHON $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"; }

install_venv() {
    if [ "$SKIP_VENV" = 1 ]; then
        say "venv skipped (--skip-venv)"
        return 0
    fi
    [ -e "$FROM" ] || die "--from $FROM: no such file or directory"
    [ -x "$PYTHON" ] || die "--python $PYTHON: not an executable (apt install python3-venv)"
    local stamp want target build=""
    want="$(python_line; source_stamp)"
    stamp="$VENV/.fedge-source"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        say "venv $VENV is up to date"
        return 0
    fi
    if ! [ -f "$stamp" ] || [ "$(head -n1 "$stamp")" != "$(python_line)" ]; then
        "$PYTHON" -m venv --clear "$VENV"  # new, half-made, or for another interpreter
    fi
    if [ -f "$FROM" ]; then
        target="$FROM"
    else  # build from a copy: pip builds in-tree, and the checkout may not be ours to write
        build="$(mktemp -d)"
        (cd "$FROM" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' \
            pyproject.toml README.md fedge agent aggregator broker fleet) | tar -xf - -C "$build"
        target="$build"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
        "$target${EXTRAS:+[$EXTRAS]}"
    [ -z "$build" ] || rm -rf "$build"
    printf '%s\n' "$want" > "$stamp"
    CHANGED=1
    say "venv $VENV: $("$VENV/bin/fedge-$COMPONENT" --help >/dev/null && echo ok)"
}

install_unit() {
    local rendered
    rendered="$(mktemp)"
    sed "s|@PREFIX@|$PREFIX|g" "$HERE/$UNIT" > "$rendered"
    install_file "$rendered" "$UNITS/$UNIT" 0644
    rm -f "$rendered"
    install_file "$CHECKOUT/docs/deploy.md" "$DOCS/deploy.md" 0644
    install_file "$HERE/$COMPONENT.example.toml" "$DOCS/$COMPONENT.example.toml" 0644
}

# set_default FILE KEY VALUE: append "KEY = VALUE" to a flat TOML file that does not set KEY.
set_default() {
    if grep -Eq "^[[:space:]]*$2[[:space:]]*=" "$1"; then
        return 0
    fi
    if grep -Eq '^[[:space:]]*\[' "$1"; then
        die "$1 has a [table]; add '$2 = $3' by hand"
    fi
    printf '%s = %s  # set by install-%s.sh\n' "$2" "$3" "$COMPONENT" >> "$1"
}

install_config() {
    local conf="$ETC/$COMPONENT.toml" name src mode
    install -d -m 0750 "$ETC"
    owned "root:$USER_NAME" "$ETC"
    if [ -n "$FOLDER" ]; then
        [ -f "$FOLDER/$COMPONENT.toml" ] || die "$FOLDER has no $COMPONENT.toml (a folder of fedge-broker init?)"
        for src in "$FOLDER"/*; do
            [ -f "$src" ] || continue
            name="$(basename "$src")"
            if [ -e "$ETC/$name" ]; then
                say "kept $ETC/$name"
                continue
            fi
            case "$name" in
                password|*.key) mode=0600 ;;  # secrets: the service user's alone
                *.toml) mode=0640 ;;
                *) mode=0644 ;;
            esac
            install -m "$mode" "$src" "$ETC/$name"
            case "$mode" in 0600) owned "$USER_NAME:$USER_NAME" "$ETC/$name" ;; 0640) owned "root:$USER_NAME" "$ETC/$name" ;; esac
            [ "$name" != "$COMPONENT.toml" ] || config_defaults "$ETC/$name"
            CHANGED=1
        done
    elif [ -e "$conf" ]; then
        say "kept $conf"
    else
        install -m 0640 "${CONFIG:-$HERE/$COMPONENT.example.toml}" "$conf"
        owned "root:$USER_NAME" "$conf"
        [ -n "$CONFIG" ] || say "installed the example config: edit $conf"
        CHANGED=1
    fi
}

install_state() {
    install -d -m 0755 "$DESTDIR/var/lib/fedge"
    install -d -m 0700 "$STATE"
    owned "$USER_NAME:$USER_NAME" "$STATE"
}

enable_unit() {
    if [ "$ENABLE" = 0 ]; then
        say "not enabled (--no-enable)"
        return 0
    fi
    if booted; then
        systemctl daemon-reload
        systemctl --quiet enable "$UNIT"
    elif command -v systemctl >/dev/null 2>&1; then  # a DESTDIR, or no systemd running
        systemctl --root="${DESTDIR:-/}" --quiet enable "$UNIT"
    else
        mkdir -p "$UNITS/multi-user.target.wants"
        ln -sfn "/etc/systemd/system/$UNIT" "$UNITS/multi-user.target.wants/$UNIT"
    fi
    if ! live; then
        say "enabled in $DESTDIR; not started"
        return 0
    fi
    if [ ! -x "$VENV/bin/fedge-$COMPONENT" ]; then
        say "enabled; not started: no venv at $VENV"
        return 0
    fi
    # As the service user, so unreadable secrets or a state dir it cannot use show up now.
    if ! runuser -u "$USER_NAME" -- "$VENV/bin/fedge-$COMPONENT" \
        --check-config "$ETC/$COMPONENT.toml" >/dev/null; then
        say "enabled, not started: fix $ETC/$COMPONENT.toml (above), then: systemctl start $UNIT"
    elif ! booted; then
        say "enabled, config valid; not started (systemd is not running here)"
    elif ! systemctl --quiet is-active "$UNIT"; then
        systemctl start "$UNIT" && say "started: journalctl -u $UNIT -f"
    elif [ "$CHANGED" = 1 ]; then
        systemctl restart "$UNIT" && say "restarted (new version, unit or config)"
    fi
}

do_install() {
    install_user
    install_venv
    install_unit
    install_config
    install_state
    enable_unit
    say "installed (prefix $PREFIX${DESTDIR:+, destdir $DESTDIR})"
}

# -- uninstall -----------------------------------------------------------------------------

do_uninstall() {
    if booted; then
        systemctl disable --now "$UNIT" 2>/dev/null || true
    elif command -v systemctl >/dev/null 2>&1 && [ -e "$UNITS/$UNIT" ]; then
        systemctl --root="${DESTDIR:-/}" --quiet disable "$UNIT" 2>/dev/null || true
    fi
    rm -f "$UNITS/multi-user.target.wants/$UNIT" "$UNITS/$UNIT" "$DOCS/$COMPONENT.example.toml"
    rmdir "$UNITS/multi-user.target.wants" 2>/dev/null || true
    if booted; then systemctl daemon-reload; fi
    if [ -e "$UNITS/fedge-$(other_component).service" ]; then
        say "venv kept: fedge-$(other_component) uses it"
    else
        rm -rf "$VENV" "$DOCS" "$SYSUSERS"
        rmdir "$DESTDIR$PREFIX/share/doc" "$DESTDIR$PREFIX/share" "$DESTDIR$PREFIX" 2>/dev/null || true
    fi
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC" "$STATE"
        rmdir "$DESTDIR/etc/fedge" "$DESTDIR/var/lib/fedge" 2>/dev/null || true
        say "purged $ETC and $STATE"
    else
        say "kept $ETC and $STATE (--purge removes them)"
    fi
    if live; then say "user $USER_NAME kept (files elsewhere may still belong to it)"; fi
    say "uninstalled"
}

main() {
    parse_args "$@"
    if [ "$UNINSTALL" = 1 ]; then do_uninstall; else do_install; fi
}
