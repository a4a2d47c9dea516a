#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, on loopback only.
#
#   scripts/postgres.sh start DIR   initialise a cluster in DIR (empty or missing), start it on a
#                                   free 127.0.0.1 port and print its URL on stdout:
#                                   postgres://nanogate@127.0.0.1:PORT/postgres
#   scripts/postgres.sh stop DIR    stop it (nothing to do when it is not running)
#
# The superuser is `nanogate` with trust authentication: for tests, never for data that matters.
# initdb and postgres refuse to run as root, so as root the binaries run as the system user
# `nanogate-pg` (created when missing; `nobody` if it cannot be) and DIR is given to that user;
# DIR's parent must be traversable by it (a `mktemp -d` directory under /tmp is).
# The binaries come from PATH or the newest /usr/lib/postgresql/*/bin (Debian's `postgresql`).
# Everything but the URL goes to stderr; the server's log is DIR/postgres.log.
set -euo pipefail

usage() {
    echo "usage: $0 start DIR | stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
command=$1
dir=$2
[ -n "$dir" ] || usage

find_bindir() {
    local initdb
    if initdb=$(command -v initdb 2>/dev/null); then
        dirname "$(readlink -f "$initdb")"
        return
    fi
    local candidate
    candidate=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$candidate" ] && [ -x "$candidate/initdb" ]; then
        echo "$candidate"
        return
    fi
    echo "postgres.sh: no initdb on PATH or under /usr/lib/postgresql/*/bin (apt-get install postgresql)" >&2
    exit 1
}

# as_owner CMD...: run CMD as the cluster's owner (this user, or the unprivileged one under root).
owner=""
as_owner() {
    if [ -z "$owner" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$owner" -- "$@"
    elif command -v setpriv >/dev/null 2>&1; then
        setpriv --reuid="$owner" --regid="$(id -g "$owner")" --init-groups -- "$@"
    else
        su -s /bin/sh "$owner" -c "$(printf '%q ' "$@")"
    fi
}

choose_owner() {
    [ "$(id -u)" -eq 0 ] || return 0
    owner=nanogate-pg
    if ! id -u "$owner" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$owner" >/dev/null 2>&1 \
            || owner=nobody
    fi
}

free_port() {
    # A port nothing listens on, from the ephemeral range's lower neighbours; pg_ctl's failure
    # to bind (a race with another process) makes `start` try another one.
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "postgres.sh: no free port found" >&2
    exit 1
}

start() {
    local bindir
    bindir=$(find_bindir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local data="$dir/data"
    if [ -e "$data/PG_VERSION" ]; then
        echo "postgres.sh: $dir already holds a cluster; stop it and use an empty directory" >&2
        exit 1
    fi
    choose_owner
    if [ -n "$owner" ]; then
        chown "$owner" "$dir"
        chmod 700 "$dir"
        if ! as_owner test -w "$dir"; then
            echo "postgres.sh: $owner cannot write $dir (is a parent directory closed to it?)" >&2
            exit 1
        fi
    fi
    cd "$dir"  # the owner may not be allowed into the caller's working directory

    as_owner "$bindir/initdb" -D "$data" -U nanogate --auth=trust --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    # For tests: no durability, little memory, and room for every gateway's pool of a parallel
    # test run (about 200 connections at its peak; at the limit PostgresNIO retries, slowly).
    as_owner tee -a "$data/postgresql.conf" >/dev/null <<EOF

# scripts/postgres.sh: a throwaway test cluster
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 600
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
EOF

    local port attempt
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        if as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/postgres.log" -o "-p $port" -w -t 60 start >/dev/null 2>&1; then
            break
        fi
        if [ "$attempt" -eq 5 ]; then
            echo "postgres.sh: the server did not start; its log:" >&2
            tail -n 30 "$dir/postgres.log" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    echo "$port" | as_owner tee "$dir/port" >/dev/null

    # pg_ctl -w waited for the postmaster; make sure TCP connections are accepted too.
    local deadline=$((SECONDS + 30))
    until "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U nanogate -d postgres; do
        if [ $SECONDS -ge $deadline ]; then
            echo "postgres.sh: 127.0.0.1:$port does not accept connections; its log:" >&2
            tail -n 30 "$dir/postgres.log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    echo "postgres.sh: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $data, owner ${owner:-$(id -un)})" >&2
    echo "postgres://nanogate@127.0.0.1:$port/postgres"
}

stop() {
    local data="$dir/data"
    if [ ! -f "$data/PG_VERSION" ]; then
        echo "postgres.sh: no cluster in $dir" >&2
        return 0
    fi
    if [ ! -f "$data/postmaster.pid" ]; then
        return 0  # not running
    fi
    local bindir
    bindir=$(find_bindir)
    if [ "$(id -u)" -eq 0 ]; then
        owner=$(stat -c %U "$data")
        [ "$owner" != root ] || owner=""
    fi
    cd "$dir"
    as_owner "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
}

case "$command" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
