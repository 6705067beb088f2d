// Aeris map helpers, written for this page (no library beyond Leaflet):
// country outlines decoded from TopoJSON, marker clustering in screen
// space, and the popup's 24-hour chart as inline SVG.
(function () {
  'use strict';

  // TopoJSON (https://github.com/topojson/topojson-specification) to
  // Leaflet polygons: each arc is delta-encoded and quantized
  // (`transform`), a negative arc index ~i means arc i reversed, and
  // consecutive arcs of a ring share their joining point.
  function topoPolygons(topo, name) {
    var tf = topo.transform;
    var arcs = topo.arcs.map(function (arc) {
      var x = 0, y = 0;
      return arc.map(function (p) {
        x += p[0]; y += p[1];
        return [y * tf.scale[1] + tf.translate[1], x * tf.scale[0] + tf.translate[0]];
      });
    });
    function ring(indices) {
      var pts = [];
      indices.forEach(function (i) {
        var a = i < 0 ? arcs[~i].slice().reverse() : arcs[i];
        pts = pts.concat(pts.length ? a.slice(1) : a);
      });
      return pts;
    }
    function polygon(rings) { return rings.map(ring); }
    return topo.objects[name].geometries.map(function (g) {
      var latlngs = g.type === 'Polygon' ? polygon(g.arcs) :
        g.type === 'MultiPolygon' ? g.arcs.map(polygon) : [];
      return { name: g.properties && g.properties.name, latlngs: latlngs };
    }).filter(function (f) { return f.latlngs.length > 0; });
  }

  // The countries on their own pane under the tiles (z-index 150; Leaflet's
  // tile pane is 200), drawn on a canvas: land on the sea-coloured map
  // background, borders and coastlines as strokes. Resolves to the number
  // of countries drawn.
  function outlines(map, url) {
    var pane = map.createPane('aeris-outlines');
    pane.style.zIndex = 150;
    var renderer = L.canvas({ pane: 'aeris-outlines', padding: 0.5 });
    return fetch(url).then(function (res) {
      if (!res.ok) { throw new Error('HTTP ' + res.status); }
      return res.json();
    }).then(function (topo) {
      var countries = topoPolygons(topo, 'countries');
      countries.forEach(function (c) {
        L.polygon(c.latlngs, {
          renderer: renderer, pane: 'aeris-outlines', interactive: false,
          color: '#6b7785', weight: 1, fillColor: '#f2efe6', fillOpacity: 1
        }).addTo(map);
      });
      return countries.length;
    });
  }

  // Groups points closer than `radius` pixels: each point not yet taken
  // starts a group and takes every untaken point within `radius` of it
  // (a grid of radius-sized cells keeps this linear for spread-out
  // networks). `points` is [{id, x, y}] in layer pixels, sorted by id so
  // the grouping does not depend on arrival order.
  function cluster(points, radius) {
    var cells = {};
    function key(cx, cy) { return cx + ',' + cy; }
    points.forEach(function (p) {
      var k = key(Math.floor(p.x / radius), Math.floor(p.y / radius));
      (cells[k] = cells[k] || []).push(p);
    });
    var taken = {};
    var groups = [];
    points.forEach(function (p) {
      if (taken[p.id]) { return; }
      taken[p.id] = true;
      var group = [p];
      var cx = Math.floor(p.x / radius), cy = Math.floor(p.y / radius);
      for (var dx = -1; dx <= 1; dx++) {
        for (var dy = -1; dy <= 1; dy++) {
          (cells[key(cx + dx, cy + dy)] || []).forEach(function (q) {
            if (!taken[q.id] && Math.hypot(q.x - p.x, q.y - p.y) <= radius) {
              taken[q.id] = true;
              group.push(q);
            }
          });
        }
      }
      groups.push(group.map(function (g) { return g.id; }));
    });
    return groups;
  }

  function svgEl(name, attrs, text) {
    var el = document.createElementNS('http://www.w3.org/2000/svg', name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (text !== undefined) { el.textContent = text; }
    return el;
  }

  // A bar chart of the hourly means of the 24 hours ending with the hour
  // of `nowMs`: one bar per hour with a rollup, coloured by that hour's
  // AQI band (`colour`), faded when the hour is incomplete (fewer than 75 %
  // of its expected readings). Hours without data stay empty.
  function chart(rows, nowMs, title, unit, colour) {
    var W = 280, H = 130, left = 34, right = 6, top = 18, bottom = 20;
    var hour = 3600000;
    var last = Math.floor(nowMs / hour) * hour;
    var first = last - 23 * hour;
    var slot = (W - left - right) / 24;
    var svg = svgEl('svg', { 'class': 'aeris-chart', width: W, height: H, viewBox: '0 0 ' + W + ' ' + H });
    svg.appendChild(svgEl('text', { x: 0, y: 11, 'font-size': 11, fill: '#222' }, title + ' (' + unit + ')'));
    var shown = rows.filter(function (r) { return r.hour_ms >= first && r.hour_ms <= last; });
    var max = shown.reduce(function (m, r) { return Math.max(m, r.mean); }, 0);
    var top_value = max > 0 ? Math.ceil(max * 1.1) : 1;
    var base = H - bottom;
    svg.appendChild(svgEl('line', { x1: left, y1: base, x2: W - right, y2: base, stroke: '#444' }));
    svg.appendChild(svgEl('line', { x1: left, y1: top, x2: left, y2: base, stroke: '#444' }));
    svg.appendChild(svgEl('text', { x: left - 3, y: top + 4, 'font-size': 10, 'text-anchor': 'end', fill: '#222' }, String(top_value)));
    svg.appendChild(svgEl('text', { x: left - 3, y: base, 'font-size': 10, 'text-anchor': 'end', fill: '#222' }, '0'));
    [[first, 'start'], [first + 12 * hour, 'middle'], [last, 'end']].forEach(function (l) {
      var d = new Date(l[0]);
      var label = ('0' + d.getHours()).slice(-2) + ':00';
      var x = l[1] === 'start' ? left : l[1] === 'end' ? W - right : left + 12.5 * slot;
      svg.appendChild(svgEl('text', { x: x, y: base + 13, 'font-size': 9, 'text-anchor': l[1], fill: '#555' }, label));
    });
    shown.forEach(function (r) {
      var h = Math.max(1, (base - top) * r.mean / top_value);
      var x = left + (r.hour_ms - first) / hour * slot;
      var bar = svgEl('rect', {
        'class': 'aeris-bar', x: (x + 1).toFixed(1), y: (base - h).toFixed(1),
        width: Math.max(1, slot - 2).toFixed(1), height: h.toFixed(1),
        fill: colour(r.aqi), 'fill-opacity': r.valid ? 1 : 0.35, stroke: '#333', 'stroke-width': 0.5,
        'data-hour': r.hour_ms, 'data-mean': r.mean, 'data-valid': r.valid
      });
      bar.appendChild(svgEl('title', {}, new Date(r.hour_ms).toISOString().slice(0, 16) + 'Z: ' +
        (Math.round(r.mean * 10) / 10) + ' ' + unit + (r.valid ? '' : ' (incomplete hour)')));
      svg.appendChild(bar);
    });
    return svg;
  }

  window.AerisLayers = { topoPolygons: topoPolygons, outlines: outlines, cluster: cluster, chart: chart };
})();
