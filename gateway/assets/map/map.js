// Aeris live map: sensors from /api/sensors, coloured by their NowCast AQI
// (US EPA, from the gateway's hourly rollups), kept current by the
// server-sent events of /api/live. Country outlines are drawn from the
// gateway's own copy of Natural Earth, so the map reads without tiles or
// network; close markers are clustered; a click shows the sensor's NowCast
// and a 24-hour chart of its hourly means (/api/hours). A marker's reading
// only moves forward in time, like the latest value it shows.
(function () {
  'use strict';
  var cfg = JSON.parse(document.getElementById('aeris-config').textContent);
  var layers = window.AerisLayers;
  var map = L.map('map', { worldCopyJump: true }).setView([50, 10], 4);
  window.aerisMap = map;
  window.aerisOutlines = 0;
  layers.outlines(map, 'assets/countries-50m.json').then(function (n) {
    window.aerisOutlines = n;
  }).catch(function (e) { status('country outlines not loaded: ' + e); });
  map.attributionControl.addAttribution('outlines: Natural Earth (public domain)');
  if (cfg.tile_url) {
    L.tileLayer(cfg.tile_url, { maxZoom: 19 }).addTo(map);
  }
  var bands = [
    [50, '#00e400', 'Good'], [100, '#ffff00', 'Moderate'],
    [150, '#ff7e00', 'Unhealthy for Sensitive Groups'], [200, '#ff0000', 'Unhealthy'],
    [300, '#8f3f97', 'Very Unhealthy'], [Infinity, '#7e0023', 'Hazardous']
  ];
  var NO_NOWCAST = '#9e9e9e';
  function colour(aqi) {
    if (aqi === null || aqi === undefined) { return NO_NOWCAST; }
    for (var i = 0; i < bands.length; i++) { if (aqi <= bands[i][0]) { return bands[i][1]; } }
    return '#7e0023';
  }
  function nowcastAqi(s) { return s && s.nowcast ? s.nowcast.aqi : null; }
  var NAMES = { pm1: 'PM1', pm25: 'PM2.5', pm10: 'PM10', no2: 'NO₂', o3: 'O₃', co: 'CO', so2: 'SO₂' };
  function pollutantName(q) { return NAMES[q] || q; }
  document.getElementById('legend').innerHTML = '<div class="legend-title">NowCast AQI (US EPA)</div>' +
    bands.map(function (b) {
      return '<div><span class="swatch" style="background:' + b[1] + '"></span>' + b[2] + '</div>';
    }).join('') +
    '<div><span class="swatch" style="background:' + NO_NOWCAST + '"></span>no NowCast (needs 2 of the last 3 hours)</div>' +
    '<div><span class="swatch cluster-swatch"></span>a group of sensors: the worst NowCast</div>';

  function esc(t) {
    return String(t).replace(/[&<>"']/g, function (c) {
      return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c];
    });
  }

  // id -> { reading, nowcast, marker }; the markers are also reachable by
  // id for tests and the console.
  var sensors = {};
  var markers = {};
  window.aerisSensors = sensors;
  window.aerisMarkers = markers;
  window.aerisUpdates = 0;
  window.aerisLive = false;
  var fitted = false;

  // Each device's data debt from /api/devices: readings it holds unacked
  // and the age of the oldest, refreshed every 30 s. Shown in a list in
  // the panel and in the popups of the device's sensors.
  var devices = {};
  window.aerisDevices = devices;
  function age(s) {
    if (s === null || s === undefined) { return '–'; }
    if (s < 120) { return s + ' s'; }
    if (s < 7200) { return Math.round(s / 60) + ' min'; }
    if (s < 172800) { return Math.round(s / 3600) + ' h'; }
    return Math.round(s / 86400) + ' d';
  }
  function debt(d) {
    return 'queued ' + d.queued_readings + ', oldest unsent ' + age(d.oldest_unsent_age_s) +
      (d.drain_eta_s === null ? '' : ', drains in ' + age(d.drain_eta_s));
  }
  // A device with a desired configuration it does not run (issue 18):
  // 'pending 3/5' (runs 3, desired 5) or 'refused 5'; '' when converged
  // or nothing is desired.
  function drift(d) {
    var c = d.config;
    if (!c || !c.drift) { return ''; }
    return c.state === 'refused' ? 'refused ' + c.desired :
      'pending ' + (c.applied === null ? '–' : c.applied) + '/' + c.desired;
  }
  function showDevices(list) {
    var rows = list.map(function (d) {
      devices[d.device] = d;
      var cls = [d.queued_readings > 0 ? 'indebt' : '', drift(d) ? 'drift' : ''].join(' ').trim();
      return '<tr' + (cls ? ' class="' + cls + '"' : '') + ' data-device="' + esc(d.device) + '"><td>' + esc(d.device) +
        (d.online ? '' : ' (offline)') + '</td><td class="num">' + d.queued_readings +
        '</td><td class="num">' + age(d.oldest_unsent_age_s) + '</td><td>' + esc(drift(d)) + '</td></tr>';
    });
    document.getElementById('devices').innerHTML = list.length === 0 ? '' :
      '<table><tr><th>device</th><th>queued</th><th>oldest unsent</th><th>config</th></tr>' + rows.join('') + '</table>';
  }
  function loadDevices() {
    api('api/devices').then(function (list) {
      if (Array.isArray(list)) { showDevices(list); }
    }).catch(function () { /* the sensors' status line reports access problems */ });
  }

  // The popup, built when it opens: name, NowCast with its category and
  // the pollutant responsible, the latest reading, the device's debt, and
  // the chart of the last 24 hourly means, filled in when they arrive.
  function nowcastText(nc) {
    if (!nc) { return 'No NowCast: fewer than 2 of the last 3 hours have enough readings'; }
    return 'NowCast AQI <b>' + Number(nc.aqi) + '</b> · ' + esc(nc.category) + ' · from ' +
      esc(pollutantName(nc.pollutant)) + (nc.averaging === 'nowcast' ? '' : ' (' + esc(nc.averaging) + ' mean)');
  }
  function popup(id) {
    var s = sensors[id];
    var r = s.reading;
    var d = devices[r.device];
    var values = Object.keys(r.values).map(function (k) {
      return esc(pollutantName(k)) + ' ' + esc(r.values[k]);
    }).join(', ');
    var el = document.createElement('div');
    el.className = 'aeris-popup';
    el.innerHTML = '<div class="name"><b>' + esc(r.sensor) + '</b> <span class="device">(' + esc(r.device) + ')</span></div>' +
      '<div class="nowcast"><span class="swatch" style="background:' + colour(nowcastAqi(s)) + '"></span>' + nowcastText(s.nowcast) + '</div>' +
      '<div class="latest">latest ' + values + ' at ' + esc(new Date(r.ts_ms).toISOString().slice(0, 19)) + 'Z' +
      (r.aqi_instant === null || r.aqi_instant === undefined ? '' : ' (instant AQI ' + Number(r.aqi_instant) + ')') + '</div>' +
      (d ? '<div class="debt"><i>' + esc(debt(d)) + '</i></div>' : '') +
      '<div class="chart">loading the last 24 hours…</div>';
    var holder = el.querySelector('.chart');
    var pollutant = s.nowcast ? s.nowcast.pollutant : null;
    var q = 'api/hours?device=' + encodeURIComponent(r.device) + '&sensor=' + encodeURIComponent(r.sensor);
    api(q).then(function (rows) {
      if (!Array.isArray(rows) || rows.length === 0) { holder.textContent = 'no hourly means in the last 24 hours'; return; }
      var chosen = pollutant || (rows.some(function (x) { return x.pollutant === 'pm25'; }) ? 'pm25' : rows[0].pollutant);
      var mine = rows.filter(function (x) { return x.pollutant === chosen; });
      holder.textContent = '';
      holder.appendChild(layers.chart(mine, Date.now(), pollutantName(chosen) + ' hourly means, last 24 h', 'µg/m³', colour));
      refit(id);
    }).catch(function (e) { holder.textContent = 'hourly means not loaded: ' + e; });
    return el;
  }

  // Leaflet evaluates a popup's content function on every update: the
  // element is built once per opening and kept until it closes, so an
  // update only lays it out again and pans the map to show all of it
  // (after the chart arrived, or a zoom that was running when it opened).
  function refit(id) {
    var s = sensors[id];
    if (s && s.popupEl && s.marker.isPopupOpen()) { s.marker.getPopup().update(); }
  }
  var openId = null;
  function marker(id) {
    var m = L.circleMarker(sensors[id].latlng, {
      radius: 9, color: '#222', weight: 1, fillOpacity: 0.9, className: 'aeris-sensor'
    });
    m.bindPopup(function () {
      var s = sensors[id];
      if (!s.popupEl) { s.popupEl = popup(id); }
      return s.popupEl;
    }, { minWidth: 290, maxWidth: 320 });
    m.on('popupopen', function () { openId = id; });
    m.on('popupclose', function () { sensors[id].popupEl = null; if (openId === id) { openId = null; } });
    return m;
  }
  map.on('zoomend', function () { if (openId) { refit(openId); } });

  // Updates a sensor from a reading; `nowcast` is the rollups' current AQI
  // (`undefined` for a live reading, which has none: the last one stays).
  function show(r, nowcast) {
    var s = sensors[r.id];
    if (!s) {
      s = sensors[r.id] = { reading: r, nowcast: null, latlng: L.latLng(r.lat, r.lon) };
      s.marker = markers[r.id] = marker(r.id);
    } else if (r.ts_ms > s.reading.ts_ms) {
      s.reading = r;
      s.latlng = L.latLng(r.lat, r.lon);
      s.marker.setLatLng(s.latlng);
    }
    if (nowcast !== undefined) { s.nowcast = nowcast || null; }
    var m = s.marker;
    m.setStyle({ fillColor: colour(nowcastAqi(s)) });
    m.aerisTs = s.reading.ts_ms;
    m.aerisAqi = nowcastAqi(s);
    m.bindTooltip(esc(s.reading.sensor) + ' · ' + (s.nowcast ? 'NowCast AQI ' + Number(s.nowcast.aqi) : 'no NowCast'),
      { direction: 'right', offset: [10, 0] });
    var el = m.getElement && m.getElement();
    if (el) { el.setAttribute('data-sensor', r.id); }
    recluster();
  }

  // Clusters, recomputed after every zoom and every change of sensors:
  // markers closer than CLUSTER_PX on screen are replaced by one round
  // marker with their number, coloured by the worst NowCast among them.
  // A click zooms in on the group, or lists it when its sensors share a
  // place.
  var CLUSTER_PX = 40;
  var clusterLayer = L.layerGroup().addTo(map);
  var pending = false;
  window.aerisClusters = [];
  function recluster() {
    if (pending) { return; }
    pending = true;
    setTimeout(function () { pending = false; drawClusters(); }, 0);
  }
  function drawClusters() {
    clusterLayer.clearLayers();
    var points = Object.keys(sensors).sort().map(function (id) {
      var p = map.latLngToLayerPoint(sensors[id].latlng);
      return { id: id, x: p.x, y: p.y };
    });
    var found = [];
    layers.cluster(points, CLUSTER_PX).forEach(function (ids) {
      if (ids.length === 1) {
        var m = sensors[ids[0]].marker;
        if (!map.hasLayer(m)) { m.addTo(map); }
        var el = m.getElement();
        if (el) { el.setAttribute('data-sensor', ids[0]); }
        return;
      }
      var worst = null;
      var bounds = L.latLngBounds([]);
      ids.forEach(function (id) {
        var s = sensors[id];
        if (map.hasLayer(s.marker)) { map.removeLayer(s.marker); }
        var a = nowcastAqi(s);
        if (a !== null && (worst === null || a > worst)) { worst = a; }
        bounds.extend(s.latlng);
      });
      var fill = colour(worst);
      var size = 30 + Math.min(16, 2 * ids.length);
      var c = L.marker(bounds.getCenter(), {
        icon: L.divIcon({
          className: 'aeris-cluster', iconSize: [size, size],
          html: '<div style="background:' + fill + '">' + ids.length + '</div>'
        }),
        title: ids.length + ' sensors', keyboard: true
      });
      c.on('click', function () {
        var sw = map.latLngToLayerPoint(bounds.getSouthWest()), ne = map.latLngToLayerPoint(bounds.getNorthEast());
        if (sw.distanceTo(ne) < 1 && map.getZoom() >= 16) {
          c.bindPopup(ids.map(function (id) {
            return esc(sensors[id].reading.sensor) + ': ' + (sensors[id].nowcast ? 'NowCast AQI ' + Number(sensors[id].nowcast.aqi) : 'no NowCast');
          }).join('<br>')).openPopup();
        } else {
          map.fitBounds(bounds.pad(0.5), { maxZoom: 18 });
        }
      });
      c.addTo(clusterLayer);
      c.getElement().setAttribute('data-members', ids.join(' '));
      found.push({ members: ids, colour: fill, center: bounds.getCenter() });
    });
    window.aerisClusters = found;
  }
  map.on('zoomend', recluster);

  // Opens a sensor's popup (a click on its marker, or on its cluster and
  // then the marker): for the panel's links and tests.
  window.aerisOpen = function (id) {
    var s = sensors[id];
    if (!s) { return false; }
    if (!map.hasLayer(s.marker)) { map.setView(s.latlng, Math.max(map.getZoom(), 14)); drawClusters(); }
    if (!map.hasLayer(s.marker)) { s.marker.addTo(map); }
    s.marker.openPopup();
    return true;
  };

  function fit() {
    var ids = Object.keys(sensors);
    if (fitted || ids.length === 0) { return; }
    fitted = true;
    var pts = ids.map(function (id) { return sensors[id].latlng; });
    if (pts.length === 1) { map.setView(pts[0], 12); } else { map.fitBounds(L.latLngBounds(pts).pad(0.2), { maxZoom: 12 }); }
  }

  function status(text) { document.getElementById('status').textContent = text; }

  var TOKEN_KEY = 'aeris-read-token';
  var token = null;
  try { token = sessionStorage.getItem(TOKEN_KEY); } catch (e) { token = null; }
  var query = new URLSearchParams(location.search);
  if (query.has('token')) {
    token = query.get('token');
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* private mode: this page only */ }
    query.delete('token');
    var rest = query.toString();
    history.replaceState(null, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
  }
  window.aerisHasToken = function () { return !!token; };

  function api(path) {
    var opts = token ? { headers: { Authorization: 'Bearer ' + token } } : {};
    return fetch(path, opts).then(function (res) {
      if (res.status === 401 || res.status === 403) { askToken(res.status); throw new Error('needs a read token'); }
      if (!res.ok) { throw new Error('HTTP ' + res.status); }
      return res.json();
    });
  }

  function asking() { return !document.getElementById('token-form').hidden; }

  function askToken(code) {
    var form = document.getElementById('token-form');
    form.hidden = false;
    status(code === 403 ? 'this token cannot read the map' : (token ? 'the read token was refused' : 'this gateway needs a read token'));
  }
  document.getElementById('token-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var input = document.getElementById('token-input');
    token = input.value.trim() || null;
    input.value = '';
    try { if (token) { sessionStorage.setItem(TOKEN_KEY, token); } } catch (e) { /* this page only */ }
    document.getElementById('token-form').hidden = true;
    load();
    connect();
  });

  // The whole picture, on load and after every (re)connect of the feed, so
  // nothing missed while disconnected stays stale; show() ignores
  // anything not newer than what a marker has.
  function loadSensors() {
    lastRefresh = Date.now();
    api('api/sensors').then(function (list) {
      if (Array.isArray(list)) { list.forEach(function (r) { show(r, r.nowcast || null); }); }
      fit();
      status(Object.keys(markers).length + ' sensors');
    }).catch(function (e) { if (!asking()) { status('cannot load sensors: ' + e); } });
  }
  function load() {
    loadSensors();
    loadDevices();
  }
  // Live readings carry no NowCast: the rollups follow them within
  // `rollups.every` (10 s by default). While readings arrive, and for
  // NOWCAST_FOLLOW_MS after the last, /api/sensors is read again every
  // NOWCAST_POLL_MS for the new NowCasts; otherwise every 2 minutes.
  var NOWCAST_POLL_MS = 5000, NOWCAST_FOLLOW_MS = 30000;
  var lastEvent = 0, lastRefresh = 0;
  setInterval(function () {
    var now = Date.now();
    var following = now - lastEvent < NOWCAST_FOLLOW_MS;
    if (now - lastRefresh >= (following ? NOWCAST_POLL_MS : 120000)) { loadSensors(); }
  }, 1000);
  load();
  setInterval(loadDevices, 30000);

  var events = null;
  var opened = false;
  var retry = null;
  function connect() {
    if (events) { events.close(); }
    clearTimeout(retry);
    events = new EventSource('api/live' + (token ? '?access_token=' + encodeURIComponent(token) : ''));
    events.addEventListener('reading', function (ev) {
      window.aerisUpdates++;
      lastEvent = Date.now();
      show(JSON.parse(ev.data), undefined);
      fit();
      status(Object.keys(markers).length + ' sensors, ' + window.aerisUpdates + ' live updates');
    });
    events.onopen = function () {
      window.aerisLive = true;
      if (opened) { load(); }
      opened = true;
    };
    var mine = events;
    events.onerror = function () {
      window.aerisLive = false;
      if (!asking()) { status('live feed reconnecting…'); }
      // The browser retries a dropped stream itself, but not a refused one
      // (401, or 503 when the gateway's stream caps are reached).
      if (mine.readyState === EventSource.CLOSED) { retry = setTimeout(connect, 10000); }
    };
  }
  connect();
})();
