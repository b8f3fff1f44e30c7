#!/bin/sh
# 4-bead PIMD of 64 water molecules: i-PI integrates, two mace-ase clients share the beads.
# More clients (one per core, or per machine with --address HOST:PORT and <ffsocket mode='inet'>)
# serve more beads at once; each exits when i-PI ends the run.
set -e
cd "$(dirname "$0")"
python make_init.py
i-pi input.xml > i-pi.log &
for client in 1 2; do
    mace-ase ipi --unix mace-water --structure init.extxyz --dtype float64 > "client-$client.log" 2>&1 &
done
wait
tail -n 3 water.out
