// Aeris live map: sensors from /api/sensors, coloured by US EPA AQI, kept
// current by the server-sent events of /api/live. A marker only moves
// forward in time, like the latest value it shows.
(function () {
  'use strict';
  var cfg = JSON.parse(document.getElementById('aeris-config').textContent);
  var map = L.map('map').setView([20, 0], 2);
  if (cfg.tile_url) {
    L.tileLayer(cfg.tile_url, { maxZoom: 19 }).addTo(map);
  }
  var bands = [
    [50, '#00e400', 'good'], [100, '#ffff00', 'moderate'],
    [150, '#ff7e00', 'unhealthy for sensitive groups'], [200, '#ff0000', 'unhealthy'],
    [300, '#8f3f97', 'very unhealthy'], [Infinity, '#7e0023', 'hazardous']
  ];
  function colour(aqi) {
    if (aqi === null || aqi === undefined) { return '#888888'; }
    for (var i = 0; i < bands.length; i++) { if (aqi <= bands[i][0]) { return bands[i][1]; } }
    return '#7e0023';
  }
  document.getElementById('legend').innerHTML = bands.map(function (b) {
    return '<div><span class="swatch" style="background:' + b[1] + '"></span>' + b[2] + '</div>';
  }).join('');

  var markers = {};
  window.aerisMarkers = markers;
  window.aerisUpdates = 0;
  window.aerisLive = false;
  var fitted = false;

  function popup(r) {
    var rows = Object.keys(r.values).map(function (k) { return k + ': ' + r.values[k]; });
    return '<b>' + r.sensor + '</b> (' + r.device + ')<br>AQI ' + (r.aqi === null ? '–' : r.aqi) +
      '<br>' + rows.join('<br>') + '<br>' + new Date(r.ts_ms).toISOString();
  }

  function show(r) {
    var m = markers[r.id];
    if (m && m.aerisTs >= r.ts_ms) { return; }
    var fill = colour(r.aqi);
    if (!m) {
      m = L.circleMarker([r.lat, r.lon], {
        radius: 9, color: '#222', weight: 1, fillColor: fill, fillOpacity: 0.9, className: 'aeris-sensor'
      }).addTo(map);
      markers[r.id] = m;
    } else {
      m.setLatLng([r.lat, r.lon]);
      m.setStyle({ fillColor: fill });
    }
    m.aerisTs = r.ts_ms;
    m.aerisAqi = r.aqi;
    var el = m.getElement && m.getElement();
    if (el) { el.setAttribute('data-sensor', r.id); }
    m.bindPopup(popup(r));
    m.bindTooltip(r.sensor + ' · AQI ' + (r.aqi === null ? '–' : r.aqi), { permanent: true, direction: 'right', offset: [10, 0] });
  }

  function fit() {
    var ids = Object.keys(markers);
    if (fitted || ids.length === 0) { return; }
    fitted = true;
    var pts = ids.map(function (id) { return markers[id].getLatLng(); });
    if (pts.length === 1) { map.setView(pts[0], 12); } else { map.fitBounds(L.latLngBounds(pts).pad(0.2)); }
  }

  function status(text) { document.getElementById('status').textContent = text; }

  // The whole picture, on load and after every (re)connect of the feed, so
  // nothing missed while disconnected stays stale; show() ignores
  // anything not newer than what a marker has.
  function load() {
    fetch('api/sensors').then(function (res) { return res.json(); }).then(function (list) {
      if (Array.isArray(list)) { list.forEach(show); }
      fit();
      status(Object.keys(markers).length + ' sensors');
    }).catch(function (e) { status('cannot load sensors: ' + e); });
  }
  load();

  var events = new EventSource('api/live');
  events.addEventListener('reading', function (ev) {
    window.aerisUpdates++;
    show(JSON.parse(ev.data));
    fit();
    status(Object.keys(markers).length + ' sensors, ' + window.aerisUpdates + ' live updates');
  });
  var opened = false;
  events.onopen = function () {
    window.aerisLive = true;
    if (opened) { load(); }
    opened = true;
  };
  events.onerror = function () { window.aerisLive = false; status('live feed reconnecting…'); };
})();
