#!/usr/bin/env bash
# End-to-end tests of docker-compose.yml on real containers (issue 5):
#   1. the original README walkthrough against the published ports;
#   2. `docker kill` of the leader -> a new leader, writes continue; `docker start` -> the
#      old leader catches up;
#   3. `docker network disconnect` of the leader -> the majority elects a new leader, the
#      isolated node serves no stale read and accepts no write; after `docker network
#      connect` it converges;
#   3b. membership: server6 (the `grow` profile) joins with DISTRAFT_JOIN and is promoted,
#      then `distraft member remove` takes it out and its container and volume go;
#   4. `docker-compose down` then `up` -> every key written is still there;
#   5. mutual TLS: scripts/compose-certs.sh, `up` with docker-compose.tls.yml -> healthy
#      over HTTPS, every key still there, a new write on all 5 nodes, plain HTTP refused;
#   6. backup and restore: `distraft backup` from a follower's published HTTPS port (then
#      `distraft backup --check`, which must refuse a truncated copy); a key written after
#      the backup; then a SECOND compose project (its own name, network and volumes) with
#      docker-compose.restore.yml, whose 5 nodes restore from the file at their first start
#      (DISTRAFT_RESTORE_FROM, the file's directory mounted read-only): exactly the keys
#      written before the backup, with their values, on every node; the later key absent;
#      another cluster id; a new write on all 5; a restarted node keeps its data (the
#      variable is ignored once the volume holds data).
#
# Usage: scripts/compose-test.sh      (skips, exit 0, when no Docker engine is present)
#
# In CI (the variable CI set, as every CI service does) a missing Docker engine is a
# failure, not a skip: a CI run must not pass without the tests it claims to run. A CI
# without Docker says so on purpose with DISTRAFT_SKIP_COMPOSE=1.
#
# It builds its own image tag with docker/build.sh, runs under its own compose project
# names (<name> and <name>-restored) with Docker-chosen host ports (so it never touches a
# user's cluster or ports), and removes both projects' containers, networks and volumes,
# its image and its files at the end, even on failure.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
started=$SECONDS

skip() {
    if [[ -n "${CI:-}" && "${CI:-}" != false && -z "${DISTRAFT_SKIP_COMPOSE:-}" ]]; then
        echo "FAIL compose tests: $* (CI is set; DISTRAFT_SKIP_COMPOSE=1 skips them on purpose)" >&2
        exit 1
    fi
    echo "SKIP compose tests: $*"
    exit 0
}
[[ -z "${DISTRAFT_SKIP_COMPOSE:-}" ]] || skip "DISTRAFT_SKIP_COMPOSE is set"
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
step() { echo "==> [$((SECONDS - started))s] $*"; }

command -v docker >/dev/null || skip "the docker command is not installed"
docker info >/dev/null 2>&1 || skip "no Docker engine answers ('docker info' failed)"
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
else
    skip "neither 'docker compose' nor 'docker-compose' is installed"
fi
for tool in curl jq cargo; do
    command -v "$tool" >/dev/null || fail "the compose tests need $tool"
done

project=distraft-compose-test-$$
image=distraft:compose-test-$$
certs_dir=$repo/target/compose-test-certs-$$
binary_dir=$repo/target/compose-test-bin-$$
# Part 6: the backup file, in a directory the restored project mounts read-only.
restore_dir=$repo/target/compose-test-backup-$$
restored_project=$project-restored
network=${project}_default
nodes=(server1 server2 server3 server4 server5)
# Empty published ports: Docker picks free host ports (looked up with `docker port`).
for n in 1 2 3 4 5 6; do
    export "DISTRAFT_SERVER${n}_PORT=" "DISTRAFT_SERVER${n}_GRPC_PORT="
done
export DISTRAFT_IMAGE=$image
# Read by docker-compose.restore.yml (part 6).
export DISTRAFT_RESTORE_DIR=$restore_dir DISTRAFT_RESTORE_FILE=compose-test.backup

compose() { "${compose_cmd[@]}" --project-name "$project" --file "$repo/docker-compose.yml" "$@"; }
# The second cluster (part 6): restored from a backup of the first.
compose_restored() {
    "${compose_cmd[@]}" --project-name "$restored_project" --file "$repo/docker-compose.yml" \
        --file "$repo/docker-compose.restore.yml" "$@"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$status" -ne 0 ]; then
        echo "---- last logs of each node (the test failed) ----" >&2
        compose logs --no-color --tail 30 >&2 2>&1 || true
        if [ -n "$(docker ps --all --quiet --filter "label=com.docker.compose.project=$restored_project")" ]; then
            echo "---- last logs of each restored node ----" >&2
            compose_restored logs --no-color --tail 30 >&2 2>&1 || true
        fi
    fi
    step "cleaning up projects $project and $restored_project and image $image"
    compose --profile grow down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    compose_restored --profile grow down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    docker image rm "$image" >/dev/null 2>&1 || true
    rm -rf "$certs_dir" "$binary_dir" "$restore_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers ----------------------------------------------------------------------------

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s until it succeeds; fails
# the test naming WHAT after SECONDS.
wait_until() {
    local seconds=$1 what=$2
    shift 2
    local begin=$SECONDS
    until "$@"; do
        [ $((SECONDS - begin)) -lt "$seconds" ] || fail "waited ${seconds}s for: $what"
        sleep 0.2
    done
    echo "    after $((SECONDS - begin))s: $what" >&2
}

node_number() { echo "${1#server}"; }
# The project the node helpers below look at: $project, then $restored_project (part 6).
nodes_project=$project
# The container of NODE (by compose's labels: `docker-compose ps` is slow to start).
container() {
    docker ps --all --quiet --filter "label=com.docker.compose.project=$nodes_project" \
        --filter "label=com.docker.compose.service=$1"
}

declare -A container_id http_port
# Looks up every node's container and published HTTP port; run after anything that
# (re)creates or starts containers, since Docker may then pick new host ports.
refresh_nodes() {
    local node id port
    for node in "${nodes[@]}"; do
        id=$(container "$node")
        [ -n "$id" ] || fail "no container for $node"
        container_id[$node]=$id
        port=$(docker port "$id" "500$(node_number "$node")/tcp") || fail "$node publishes no HTTP port"
        port=${port%%$'\n'*} # one line per host address: 127.0.0.1:<port>
        http_port[$node]=${port##*:}
    done
}

# Part 5 switches these to HTTPS with the development CA.
scheme=http
curl_tls=()
url() { echo "$scheme://127.0.0.1:${http_port[$1]}"; }
# http NODE PATH [curl args...]: the JSON answer of NODE's published HTTP port.
http() {
    local node=$1 path=$2
    shift 2
    curl --silent --show-error --max-time 10 --location ${curl_tls[@]+"${curl_tls[@]}"} "$@" "$(url "$node")$path"
}
status_of() { http "$1" / | jq -c .status; }

# The leader as NODE sees it, when NODE knows one.
leader_seen_by() { http "$1" / 2>/dev/null | jq -er '.status.leader | select(. != "")'; }

# agreed_leader NODE...: succeeds, printing the name, when every NODE reports the same
# leader and that leader is among them and says it leads.
agreed_leader() {
    local node leader="" seen
    for node in "$@"; do
        seen=$(leader_seen_by "$node") || return 1
        [ -z "$leader" ] || [ "$seen" = "$leader" ] || return 1
        leader=$seen
    done
    printf '%s\n' "$@" | grep -qx "$leader" || return 1
    [ "$(http "$leader" / | jq -r .status.is_leader)" = true ] || return 1
    echo "$leader"
}

# wait_for_leader SECONDS NODE...: sets $leader once NODE... agree on one of them.
wait_for_leader() {
    local seconds=$1
    shift
    wait_until "$seconds" "one leader agreed on by $*" agreed_leader "$@" >/dev/null
    leader=$(agreed_leader "$@") || fail "the leader changed again while looking it up"
}

declare -A expected
# put NODE KEY VALUE: writes through NODE's published port (as the README does) and
# remembers the value for the final check.
put() {
    local answer
    answer=$(http "$1" "/$2" -X POST --data-urlencode "value=$3") || fail "POST /$2 on $1 got no answer"
    # The original answer's fields, and the key's versions.
    [ "$(jq -cS '{ok, key, value}' <<<"$answer")" = "$(jq -cSn --arg k "$2" --arg v "$3" '{ok: true, key: $k, value: $v}')" ] &&
        [ "$(jq -r '(.mod_index > 0) and (.version >= 1)' <<<"$answer")" = true ] ||
        fail "POST /$2 on $1 answered $answer"
    expected[$2]=$3
}
# expect_value NODE KEY VALUE: a linearizable read of KEY through NODE answers VALUE.
expect_value() {
    local answer
    answer=$(http "$1" "/$2") || fail "GET /$2 on $1 got no answer"
    [ "$(jq -r .value <<<"$answer")" = "$3" ] || fail "GET /$2 on $1 answered $answer, expected the value $3"
}
# has_value NODE KEY VALUE [?stale=true]: NODE reads VALUE for KEY.
has_value() { [ "$(http "$1" "/$2${4-}" 2>/dev/null | jq -r .value 2>/dev/null)" = "$3" ]; }
# in_container NODE ARGS...: the distraft client inside NODE's container, speaking to
# NODE's own HTTP port (DISTRAFT_URL) -- works while NODE is cut off from every network.
in_container() {
    local node=$1
    shift
    docker exec "${container_id[$node]}" distraft "$@"
}
isolated_has_value() { [ "$(in_container "$1" get --stale "$2" 2>/dev/null | jq -r .value)" = "$3" ]; }

# Every node has applied the same log and holds the same state.
converged() {
    local node state first=""
    for node in "$@"; do
        state=$(status_of "$node" 2>/dev/null | jq -c '[.last_applied, .state_digest]') || return 1
        [ -z "$first" ] || [ "$state" = "$first" ] || return 1
        first=$state
    done
}

all_healthy() {
    local node
    for node in "${nodes[@]}"; do
        [ "$(docker inspect --format '{{.State.Health.Status}}' "${container_id[$node]}")" = healthy ] || return 1
    done
}

others() {
    local node
    for node in "${nodes[@]}"; do [ "$node" = "$1" ] || echo "$node"; done
}

# --- the cluster --------------------------------------------------------------------------

# The image under test holds the very binary the integration tests ran: the test build
# (scripts/test-env.sh) links glibc statically, as an image FROM scratch needs. After
# scripts/test.sh this builds nothing; alone, it makes that build. Its plants are inert
# (no DISTRAFT_PLANT is set). What these tests check (the Dockerfile, the compose files,
# the cluster in containers) does not depend on the optimization level; docker/build.sh
# alone makes release images.
# shellcheck source=scripts/test-env.sh
source "$repo/scripts/test-env.sh"
step "building image $image from the test build"
(cd "$repo" && cargo test --quiet --locked --features plants --no-run --test integration) \
    || fail "building the tests failed"
mkdir -p "$binary_dir"
cp "$repo/$test_build_dir/distraft" "$binary_dir/distraft"
# Its debug line tables are of no use in the image.
if command -v strip >/dev/null; then strip "$binary_dir/distraft"; fi
export DISTRAFT_BINARY=$binary_dir/distraft
DISTRAFT_IMAGE_BINARY=$DISTRAFT_BINARY "$repo/docker/build.sh" "$image" >/dev/null
echo "    image size: $(docker image inspect --format '{{.Size}}' "$image") bytes"

step "docker-compose up -d (project $project)"
compose up -d || fail "docker-compose up failed"
refresh_nodes
step "waiting for the healthchecks and a leader"
wait_until 60 "every container healthy (healthcheck: distraft ready)" all_healthy
wait_for_leader 30 "${nodes[@]}"
echo "    leader: $leader"

step "service names resolve inside the image (static glibc, no shell)"
for node in "${nodes[@]}"; do
    mapfile -t rest < <(others "$node")
    other=${rest[0]}
    in_container "$node" status --url "http://$other:500$(node_number "$other")" >/dev/null ||
        fail "$node cannot reach $other by its service name"
done

# --- 1. the original README walkthrough --------------------------------------------------

step "README walkthrough on the published ports"
for node in "${nodes[@]}"; do
    status=$(status_of "$node")
    jq -e --arg id "$node" '.id == $id and .up == true and (.state == "Leader" or .state == "Follower")
        and (.members | length == 5) and .members.server3 == ["server3", 9003, "server3", 5003]' \
        <<<"$status" >/dev/null || fail "GET / on $node: $status"
done
put server1 greeting hello
for node in "${nodes[@]}"; do
    expect_value "$node" greeting hello
done
put server3 greeting "hello again"
expect_value server5 greeting "hello again"
missing=$(http server2 /never-written)
jq -e '.ok == false' <<<"$missing" >/dev/null || fail "GET of a missing key answered $missing"
mapfile -t followers < <(others "$leader")
follower=${followers[0]}
[ "$(http "$follower" /stop | jq -c .)" = '{"ok":true}' ] || fail "GET /stop on $follower"
[ "$(status_of "$follower" | jq .up)" = false ] || fail "$follower still up after /stop"
put "$leader" while-stopped "4 of 5"
[ "$(http "$follower" /start | jq -c .)" = '{"ok":true}' ] || fail "GET /start on $follower"
[ "$(status_of "$follower" | jq .up)" = true ] || fail "$follower not up after /start"
wait_until 20 "$follower catching up after /start" has_value "$follower" while-stopped "4 of 5" "?stale=true"

# --- 2. docker kill of the leader, then docker start ------------------------------------

old_leader=$leader
step "docker kill $old_leader (the leader)"
docker kill "${container_id[$old_leader]}" >/dev/null
mapfile -t survivors < <(others "$old_leader")
wait_for_leader 30 "${survivors[@]}"
echo "    new leader: $leader"
for i in 1 2 3 4 5; do
    put "${survivors[$((i % 4))]}" "after-kill-$i" "value-$i"
done
[ "$(docker inspect --format '{{.State.Running}}' "${container_id[$old_leader]}")" = false ] ||
    fail "the restart policy restarted a container killed by hand"

step "docker start $old_leader"
docker start "${container_id[$old_leader]}" >/dev/null
refresh_nodes
wait_until 30 "$old_leader catching up after docker start" has_value "$old_leader" after-kill-5 value-5 "?stale=true"
put "$old_leader" after-restart "written through the restarted node"
wait_until 20 "all 5 nodes converging after the restart" converged "${nodes[@]}"

# --- 3. a real partition: the leader loses its network ----------------------------------

wait_for_leader 30 "${nodes[@]}"
isolated=$leader
put "$isolated" partition before
step "docker network disconnect $isolated (the leader)"
docker network disconnect "$network" "${container_id[$isolated]}"
mapfile -t majority < <(others "$isolated")
wait_for_leader 30 "${majority[@]}"
echo "    majority's leader: $leader"
put "${majority[0]}" partition after
put "${majority[1]}" during-partition yes

# The isolated node can no longer lead (check-quorum) and must refuse both a linearizable
# read (it would be stale) and a write (no majority can commit it).
not_leading() { [ "$(in_container "$isolated" status | jq -r .status.state)" != Leader ]; }
wait_until 10 "$isolated stepping down once it hears no majority" not_leading
if answer=$(in_container "$isolated" get partition 2>/dev/null); then
    fail "the isolated $isolated served a read: $answer"
fi
grep -q before <<<"$answer" && fail "the isolated $isolated served the stale value: $answer"
if answer=$(in_container "$isolated" put partition from-the-minority 2>/dev/null); then
    fail "the isolated $isolated accepted a write: $answer"
fi

step "docker network connect $isolated"
# Compose gave the container its service name as an alias on this network; it must come
# back with it, or its peers could not resolve it.
docker network connect --alias "$isolated" "$network" "${container_id[$isolated]}"
refresh_nodes
wait_until 30 "$isolated converging after the partition" isolated_has_value "$isolated" partition after
wait_until 20 "all 5 nodes converging after the partition" converged "${nodes[@]}"
wait_until 20 "$isolated serving linearizable reads again" has_value "$isolated" partition after
for node in "${nodes[@]}"; do
    expect_value "$node" partition after
done

# --- 3b. membership: a sixth node joins, then leaves --------------------------------------

# roles_seen_by NODE: the members as NODE sees them, "name:role" sorted, one line.
roles_seen_by() { http "$1" /cluster/members | jq -r '[.members[] | "\(.name):\(.role)"] | sort | join(",")'; }
six_voters="server1:voter,server2:voter,server3:voter,server4:voter,server5:voter,server6:voter"
five_voters="server1:voter,server2:voter,server3:voter,server4:voter,server5:voter"
has_roles() { [ "$(roles_seen_by "$1" 2>/dev/null)" = "$2" ]; }

step "docker-compose --profile grow up -d server6: it joins, catches up and is promoted"
put server2 before-growing yes
compose --profile grow up -d server6 >/dev/null 2>&1 || fail "starting server6 failed"
nodes+=(server6)
refresh_nodes
wait_until 60 "server6 a voter, as server1 sees it" has_roles server1 "$six_voters"
wait_until 30 "server6 sees six voters" has_roles server6 "$six_voters"
wait_until 30 "server6 has every earlier write" has_value server6 before-growing yes "?stale=true"
put server6 grown six
for node in "${nodes[@]}"; do
    expect_value "$node" grown six
done

step "distraft member remove server6 (inside server1's container), then remove its container"
in_container server1 member remove server6 >/dev/null || fail "removing server6 failed"
wait_until 30 "five voters again, as server1 sees it" has_roles server1 "$five_voters"
compose --profile grow rm -sf server6 >/dev/null 2>&1 || fail "removing server6's container failed"
docker volume rm "${project}_server6" >/dev/null 2>&1 || fail "removing server6's volume failed"
nodes=(server1 server2 server3 server4 server5)
put server3 after-shrinking yes
expect_value server5 after-shrinking yes

# --- 4. down and up: the volumes keep everything ----------------------------------------

step "docker-compose down, then up -d"
compose down --timeout 10
[ -z "$(compose ps -q)" ] || fail "containers left after docker-compose down"
compose up -d || fail "docker-compose up (second time) failed"
refresh_nodes
wait_for_leader 30 "${nodes[@]}"
for key in "${!expected[@]}"; do
    for node in "${nodes[@]}"; do
        expect_value "$node" "$key" "${expected[$key]}"
    done
done
echo "    ${#expected[@]} keys read back from all 5 nodes"

# --- 5. mutual TLS: the same volumes behind docker-compose.tls.yml -----------------------

step "mutual TLS: scripts/compose-certs.sh, then up -d with docker-compose.tls.yml"
"$repo/scripts/compose-certs.sh" "$certs_dir" >/dev/null
export DISTRAFT_CERTS_DIR=$certs_dir
compose down --timeout 10
compose --file "$repo/docker-compose.tls.yml" up -d || fail "docker-compose up with TLS failed"
refresh_nodes
scheme=https
curl_tls=(--cacert "$certs_dir/ca.pem")
wait_until 60 "every container healthy over HTTPS" all_healthy
wait_for_leader 30 "${nodes[@]}"
for node in "${nodes[@]}"; do
    expect_value "$node" greeting "hello again"
done
put "${nodes[0]}" over-tls yes
for node in "${nodes[@]}"; do
    expect_value "$node" over-tls yes
done
if answer=$(curl --silent --max-time 5 "http://127.0.0.1:${http_port[server1]}/"); then
    jq -e . <<<"$answer" >/dev/null 2>&1 && fail "plain HTTP was answered with TLS on: $answer"
fi
echo "    HTTPS with the CA: healthy, old keys read, a new write on all 5; plain HTTP refused"

# --- 6. a backup, restored into a second compose project ---------------------------------

wait_for_leader 30 "${nodes[@]}"
mapfile -t followers < <(others "$leader")
source_node=${followers[0]}
original_id=$(status_of "$source_node" | jq -r .cluster_id)
[[ "$original_id" =~ ^[0-9a-f]{16}$ ]] || fail "GET / on $source_node: no cluster_id ($original_id)"
step "distraft backup from $source_node (a follower) over HTTPS, then distraft backup --check"
# Readable by the nodes' user (uid 10001) whatever the umask: the directory is mounted
# read-only into the restored nodes.
mkdir -p "$restore_dir"
chmod 755 "$restore_dir"
backup_file=$restore_dir/$DISTRAFT_RESTORE_FILE
made=$("$DISTRAFT_BINARY" backup --url "$(url "$source_node")" --cacert "$certs_dir/ca.pem" "$backup_file") ||
    fail "distraft backup from $source_node failed"
chmod 644 "$backup_file"
backup_index=$(jq -er '.index' <<<"$made") && backup_bytes=$(jq -er '.bytes' <<<"$made") ||
    fail "distraft backup printed $made"
[ "$(jq -r .cluster_id <<<"$made")" = "$original_id" ] || fail "the backup names another cluster: $made"
[ "$(stat -c %s "$backup_file")" = "$backup_bytes" ] || fail "the file is not the $backup_bytes bytes announced"
[ ! -e "$backup_file.part" ] || fail "distraft backup left $backup_file.part"
checked=$("$DISTRAFT_BINARY" backup --check "$backup_file") || fail "backup --check refused a fresh backup"
jq -e --argjson index "$backup_index" --argjson keys "${#expected[@]}" \
    '.ok == true and .index == $index and .keys == $keys' <<<"$checked" >/dev/null ||
    fail "backup --check answered $checked (expected index $backup_index and ${#expected[@]} keys)"
head -c $((backup_bytes - 7)) "$backup_file" >"$restore_dir/truncated.backup"
if answer=$("$DISTRAFT_BINARY" backup --check "$restore_dir/truncated.backup" 2>&1); then
    fail "backup --check accepted a truncated backup: $answer"
fi
grep -q truncated <<<"$answer" || fail "backup --check refused a truncated backup without saying so: $answer"
echo "    index $backup_index, $backup_bytes bytes, ${#expected[@]} keys, cluster $original_id; a truncated copy refused"

# Written after the backup: the restored cluster must not have it.
put "$leader" after-backup "not in the backup"
unset 'expected[after-backup]'
compose down --timeout 10 # the first cluster's part is over: its CPU goes to the second

step "docker-compose.restore.yml: project $restored_project, 5 nodes restored from the backup"
compose_restored up -d || fail "docker-compose up of the restored project failed"
nodes_project=$restored_project
scheme=http
curl_tls=()
# A node that refuses the backup exits and its restart policy starts it again (no port
# is published meanwhile): the ports are looked up once all are healthy, and a restart
# fails the test at once.
restored_healthy() {
    local node
    for node in "${nodes[@]}"; do
        [ "$(docker inspect --format '{{.RestartCount}}' "${container_id[$node]}")" = 0 ] ||
            fail "$node exited and was restarted: did it refuse the backup? (its logs below)"
    done
    all_healthy
}
for node in "${nodes[@]}"; do
    container_id[$node]=$(container "$node")
    [ -n "${container_id[$node]}" ] || fail "no container for $node"
done
wait_until 60 "every restored container healthy" restored_healthy
refresh_nodes
wait_for_leader 30 "${nodes[@]}"
echo "    leader: $leader"
restored_id=$(status_of "$leader" | jq -r .cluster_id)
[[ "$restored_id" =~ ^[0-9a-f]{16}$ ]] || fail "GET / on $leader: no cluster_id ($restored_id)"
[ "$restored_id" != "$original_id" ] || fail "the restored cluster kept the original's cluster id $original_id"
for node in "${nodes[@]}"; do
    [ "$(status_of "$node" | jq -r .cluster_id)" = "$restored_id" ] ||
        fail "$node is in another cluster than $leader: $(status_of "$node")"
done
# Exactly the keys written before the backup, with their values: one linearizable
# listing through each node, compared as a whole.
wanted=$(for key in "${!expected[@]}"; do jq -nc --arg k "$key" --arg v "${expected[$key]}" '{($k): $v}'; done |
    jq -scS add)
for node in "${nodes[@]}"; do
    listed=$(http "$node" "/v1/keys?limit=10000" | jq -cS 'select(.ok and .next == null) | [.keys[] | {(.key): .value}] | add')
    [ "$listed" = "$wanted" ] || fail "the restored $node holds $listed, expected $wanted"
done
for node in "${nodes[@]}"; do
    answer=$(http "$node" /after-backup)
    jq -e '.ok == false' <<<"$answer" >/dev/null || fail "GET /after-backup on $node answered $answer"
done
answer=$(http "$leader" /after-restore -X POST --data-urlencode "value=new cluster")
jq -e --argjson index "$backup_index" '.ok == true and .mod_index > $index' <<<"$answer" >/dev/null ||
    fail "a write on the restored cluster answered $answer (the backup's index: $backup_index)"
expected[after-restore]="new cluster"
for node in "${nodes[@]}"; do
    expect_value "$node" after-restore "new cluster"
done
echo "    cluster $restored_id (was $original_id): ${#expected[@]} keys on all 5, after-backup absent"

# DISTRAFT_RESTORE_FROM stays set: once the volume holds data, it must be ignored.
restarted=${nodes[0]}
step "docker restart $restarted: it keeps its data, restores nothing again"
docker restart --time 5 "${container_id[$restarted]}" >/dev/null
refresh_nodes
wait_until 30 "$restarted serving after its restart" has_value "$restarted" after-restore "new cluster" "?stale=true"
[ "$(status_of "$restarted" | jq -r .cluster_id)" = "$restored_id" ] || fail "$restarted changed cluster id"
logs=$(docker logs "${container_id[$restarted]}" 2>&1)
[ "$(grep -c 'restored from a backup' <<<"$logs")" = 1 ] &&
    grep -q 'DISTRAFT_RESTORE_FROM is ignored' <<<"$logs" ||
    fail "$restarted did not restore once, then ignore DISTRAFT_RESTORE_FROM (see its logs below)"
wait_until 20 "all 5 restored nodes converging" converged "${nodes[@]}"

step "PASS: compose tests"
