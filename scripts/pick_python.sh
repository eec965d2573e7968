#!/bin/sh
# Print the Python that `make` builds .venv with: a 3.12 (then 3.13) on PATH or in pyenv,
# since ArviZ 1.x needs >= 3.12; else python3 (>= 3.11: the package then runs on ArviZ 0.x).
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for minor in 12 13; do
    for c in "$(command -v python3.$minor)" "$root"/versions/3.$minor.*/bin/python3; do
        if [ -x "$c" ] && "$c" -c "import sys; sys.exit(sys.version_info[:2] != (3, $minor))" 2>/dev/null; then
            echo "$c"; exit 0
        fi
    done
done
echo python3
