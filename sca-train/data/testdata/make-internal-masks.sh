#!/bin/sh
# Makes the GDAL internal-mask fixtures beside this script with real GDAL
# (these were made with GDAL 3.6.2, Debian's gdal-bin). Run from any
# directory: `sh make-internal-masks.sh`. Each tile is 36 x 36 pixels; its
# internal mask (1 bit, GDAL's default) is 0 over columns 13..15 and rows
# 14..16, so the first nodata pixel is (13, 14); `*_valid.tif` keeps every pixel.
set -eu
out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
geo="-a_srs EPSG:4326 -a_ullr 0 36 36 0"
for b in 1 2 3 4; do
  gdal_create -q -of GTiff -outsize 36 36 -bands 1 -ot UInt16 -burn "${b}00" $geo b$b.tif
done
gdal_create -q -of GTiff -outsize 36 36 -bands 1 -ot Byte -burn 1 $geo label.tif
gdal_create -q -of GTiff -outsize 36 36 -bands 1 -ot Byte -burn 255 $geo valid.tif
cp valid.tif hole.tif
cat > hole.geojson <<'JSON'
{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[13,22],[16,22],[16,19],[13,19],[13,22]]]}}]}
JSON
gdal_rasterize -q -burn 0 hole.geojson hole.tif
for m in hole valid; do
  gdalbuildvrt -q -separate imagery_$m.vrt b1.tif b2.tif b3.tif b4.tif $m.tif
  gdalbuildvrt -q -separate label_$m.vrt label.tif $m.tif
done
mask() { gdal_translate -q --config GDAL_TIFF_INTERNAL_MASK YES -co COMPRESS=DEFLATE "$@"; }
mask -b 1 -b 2 -b 3 -b 4 -mask 5 imagery_hole.vrt "$out/imagery_masked.tif"
mask -b 1 -b 2 -b 3 -b 4 -mask 5 -co TILED=YES -co BLOCKXSIZE=16 -co BLOCKYSIZE=16 \
  imagery_hole.vrt "$out/imagery_masked_tiled.tif"
mask -b 1 -b 2 -b 3 -b 4 -mask 5 imagery_valid.vrt "$out/imagery_masked_valid.tif"
mask -b 1 -mask 2 label_hole.vrt "$out/label_masked.tif"
