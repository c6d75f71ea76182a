#!/usr/bin/env bash
# Fetch training images that exist offline on any Debian/Ubuntu mirror: the photographs
# and renders in Debian's desktop-wallpaper packages.  Each package is downloaded with
# `apt-get download` (no installation, no root needed for this step) and unpacked with
# `dpkg -x`; the PNG/JPEG files are then gathered (as symlinks) into one flat folder
# that `implicit_kernels.apps.data.ImageFolder` reads.
#
# Usage: scripts/fetch_wallpapers.sh [DEST] [PACKAGE ...]
#   DEST      default: ${IK_DATA:-$HOME/.cache/implicit-kernels}/wallpapers
#   PACKAGE   default: the list below (missing ones are skipped with a warning)
#
# The held-out test images (scikit-image's bundled photographs) are never fetched here.
# Run `apt-get update` first if the package lists are stale.
set -euo pipefail

DEST=${1:-${IK_DATA:-$HOME/.cache/implicit-kernels}/wallpapers}
shift || true
if [ "$#" -gt 0 ]; then
    PACKAGES=("$@")
else
    PACKAGES=(plasma-workspace-wallpapers mate-backgrounds gnome-backgrounds ukui-wallpapers
              lomiri-wallpapers lomiri-wallpapers-20.04 sway-backgrounds)
fi

DEBS="$DEST/debs"
TREE="$DEST/unpacked"
IMAGES="$DEST/images"
mkdir -p "$DEBS" "$TREE" "$IMAGES"

for pkg in "${PACKAGES[@]}"; do
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then
        echo "warning: package $pkg is not known to apt here; skipped" >&2
        continue
    fi
    if ! ls "$DEBS/${pkg}"_*.deb >/dev/null 2>&1; then
        # apt-get download writes into the current directory.
        (cd "$DEBS" && apt-get download "$pkg") || { echo "warning: could not download $pkg" >&2; continue; }
    fi
    mkdir -p "$TREE/$pkg"
    dpkg -x "$DEBS/${pkg}"_*.deb "$TREE/$pkg"
done

# One flat folder of links; names carry the package and path so they never collide.
# Several packages ship each picture at many resolutions (e.g. plasma's
# contents/images/WxH.jpg): keep only the largest file of each such directory so the
# same picture is not counted many times.
find "$IMAGES" -type l -delete
python3 - "$TREE" "$IMAGES" <<'PY'
import os, sys
tree, images = sys.argv[1], sys.argv[2]
exts = (".png", ".jpg", ".jpeg")
groups = {}
for root, _, files in os.walk(tree):
    for f in files:
        if f.lower().endswith(exts):
            path = os.path.join(root, f)
            # plasma/ukui layout: <theme>/contents/images[_dark]/<W>x<H>.<ext>
            key = root if os.path.basename(root).startswith("images") else path
            groups.setdefault(key, []).append(path)
n = 0
for key, paths in sorted(groups.items()):
    best = max(paths, key=os.path.getsize)
    name = os.path.relpath(best, tree).replace(os.sep, "__")
    os.symlink(os.path.abspath(best), os.path.join(images, name))
    n += 1
print(f"{n} images linked in {images}")
PY
