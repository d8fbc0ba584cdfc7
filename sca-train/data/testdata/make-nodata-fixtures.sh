#!/bin/sh
# Makes the nodata fixtures beside this script with real GDAL (these were
# made with GDAL 3.6.2, Debian's gdal-bin). Run from any directory:
# `sh make-nodata-fixtures.sh`. Each tile is 36 x 36 pixels with a hole over
# columns 13..15 and rows 14..16, so its first nodata pixel is (13, 14):
# - `*_masked*.tif`: a GDAL internal mask (1 bit, GDAL's default) 0 over the
#   hole; `*_masked_valid.tif` keeps every pixel;
# - `*_nodata.png`: the hole holds the nodata value, which GDAL writes as the
#   PNG's tRNS colour (3-band imagery: 0; a 0/1 label: 255).
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
cp label.tif label255.tif
gdal_rasterize -q -burn 255 hole.geojson label255.tif
gdal_translate -q -of PNG -a_nodata 255 label255.tif "$out/label_nodata.png"
gdal_create -q -of GTiff -outsize 36 36 -bands 3 -ot Byte -burn 10 -burn 20 -burn 30 $geo rgb.tif
gdal_rasterize -q -b 1 -b 2 -b 3 -burn 0 -burn 0 -burn 0 hole.geojson rgb.tif
gdal_translate -q -of PNG -a_nodata 0 rgb.tif "$out/rgb_nodata.png"
rm -f "$out"/*.aux.xml
