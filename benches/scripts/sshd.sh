# benches/scripts/sshd.sh - sourced by benches/compare.sh and benches/scripts/check3.sh: a
# private OpenSSH server on loopback, as tests/src/sshd.rs starts one for the tests. Keys are
# made in its directory, only that user key is accepted, RDIST_* is accepted from the client.
#
#   sshd_start DIR REMOTE_CACHE ALIAS=IP...
#       sshd -D as the current user on one free port of every IP (127.0.0.0/8 only), with
#       keys, sshd_config, sshd.log, ssh_config and the wrapper DIR/ssh (`ssh -F
#       DIR/ssh_config "$@"`) in DIR. The config defines each ALIAS with BatchMode and
#       `SetEnv RDIST_CACHE_DIR=REMOTE_CACHE`. Sets SSHD_PID, SSH_PORT and SSH_WRAPPER; on
#       failure prints why on stderr and returns 1.
#   sshd_stop
#       Kills it (safe to call twice, or before sshd_start).
#   ssh_masters_stop DIR
#       `ssh -O exit` for every control socket in DIR (rdist's `<cache>/ssh`, say), so no
#       master connection outlives the script.
#
# Uses SSHD_BIN, SSH_BIN, KEYGEN_BIN and PY when set (else /usr/sbin/sshd, ssh, ssh-keygen,
# python3).

SSHD_PID="" SSH_PORT="" SSH_WRAPPER=""

sshd_start() {
    local d=$1 cache=$2 sshd=${SSHD_BIN:-/usr/sbin/sshd} ssh=${SSH_BIN:-ssh}
    local keygen=${KEYGEN_BIN:-ssh-keygen} py=${PY:-python3} key user attempt i ip ok pair
    shift 2
    local -a pairs=("$@") ips=()
    for pair in "${pairs[@]}"; do
        ip=${pair#*=}
        [[ $ip == 127.* ]] || { echo "sshd.sh: $ip is not a loopback address" >&2; return 1; }
        ips+=("$ip")
    done
    [[ $d != *[[:space:]]* && $cache != *[[:space:]]* ]] ||
        { echo "sshd.sh: '$d' or '$cache' contains whitespace (sshd_config cannot take it)" >&2; return 1; }
    mkdir -p -- "$d" "$cache"
    for key in host_key user_key; do
        [[ -f $d/$key ]] || "$keygen" -q -t ed25519 -N '' -C "rdist-bench-$key" -f "$d/$key" </dev/null
    done
    cp -- "$d/user_key.pub" "$d/authorized_keys"
    # sshd refuses to start without its privilege separation directory
    [[ -d /run/sshd ]] || mkdir -p /run/sshd 2>/dev/null ||
        echo "sshd.sh: warning: cannot create /run/sshd; sshd may refuse to start" >&2
    user=$(id -un)
    for attempt in 1 2 3; do
        SSH_PORT=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        {
            for ip in "${ips[@]}"; do echo "ListenAddress $ip"; done
            cat <<EOF
Port $SSH_PORT
HostKey $d/host_key
AuthorizedKeysFile $d/authorized_keys
PidFile $d/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AcceptEnv RDIST_*
EOF
        } >"$d/sshd_config"
        : >"$d/sshd.log"
        "$sshd" -D -e -f "$d/sshd_config" </dev/null >/dev/null 2>>"$d/sshd.log" &
        SSHD_PID=$!
        for ((i = 0; i < 300; i++)); do # up to 15 s
            ok=1
            for ip in "${ips[@]}"; do
                grep -q "Server listening on $ip port $SSH_PORT" "$d/sshd.log" || ok=0
            done
            ((ok)) && break
            kill -0 "$SSHD_PID" 2>/dev/null || break
            sleep 0.05
        done
        ((ok)) && break
        echo "sshd.sh: attempt $attempt on port $SSH_PORT failed: $(tail -n 3 "$d/sshd.log" | tr '\n' ' ')" >&2
        sshd_stop
    done
    [[ -n $SSHD_PID ]] || { echo "sshd.sh: sshd did not start; its log: $d/sshd.log" >&2; return 1; }
    : >"$d/ssh_config"
    for pair in "${pairs[@]}"; do
        cat >>"$d/ssh_config" <<EOF
Host ${pair%%=*}
  HostName ${pair#*=}
  Port $SSH_PORT
  User $user
  IdentityFile $d/user_key
  IdentitiesOnly yes
  BatchMode yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  SetEnv RDIST_CACHE_DIR=$cache
EOF
    done
    SSH_WRAPPER=$d/ssh
    printf '#!/bin/sh\nexec %s -F %s "$@"\n' "$ssh" "$d/ssh_config" >"$SSH_WRAPPER"
    chmod 755 -- "$SSH_WRAPPER"
}

sshd_stop() {
    [[ -n $SSHD_PID ]] || return 0
    kill -TERM "$SSHD_PID" 2>/dev/null || true
    wait "$SSHD_PID" 2>/dev/null || true
    SSHD_PID=""
}

ssh_masters_stop() {
    local s
    for s in "$1"/*; do
        [[ -S $s ]] || continue
        "${SSH_BIN:-ssh}" -F /dev/null -O exit -o "ControlPath=$s" master </dev/null >/dev/null 2>&1 || true
    done
}
