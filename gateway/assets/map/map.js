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

  // Each device's data debt from /api/devices: readings it holds unacked
  // and the age of the oldest, refreshed every 30 s. Shown in a list in
  // the panel and in the popups of the device's sensors.
  var devices = {};
  window.aerisDevices = devices;
  function esc(t) {
    return String(t).replace(/[&<>"']/g, function (c) {
      return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c];
    });
  }
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
    Object.keys(markers).forEach(function (id) { if (markers[id].aerisReading) { markers[id].bindPopup(popup(markers[id].aerisReading)); } });
  }
  function loadDevices() {
    api('api/devices').then(function (list) {
      if (Array.isArray(list)) { showDevices(list); }
    }).catch(function () { /* the sensors' status line reports access problems */ });
  }

  function popup(r) {
    var rows = Object.keys(r.values).map(function (k) { return esc(k) + ': ' + r.values[k]; });
    var d = devices[r.device];
    var nc = r.nowcast;
    return '<b>' + esc(r.sensor) + '</b> (' + esc(r.device) + ')<br>AQI ' + (r.aqi_instant === null ? '–' : r.aqi_instant) +
      (nc ? '<br>hourly AQI ' + Number(nc.aqi) + ' (' + esc(nc.category) + ', ' + esc(nc.pollutant) + ' ' + esc(nc.averaging) + ')' : '') +
      '<br>' + rows.join('<br>') + '<br>' + new Date(r.ts_ms).toISOString() +
      (d ? '<br><i>' + debt(d) + '</i>' : '');
  }

  function show(r) {
    var m = markers[r.id];
    if (m && m.aerisTs >= r.ts_ms) { return; }
    // Live readings carry no hourly AQI: keep the last one /api/sensors gave.
    if (!r.nowcast && m && m.aerisReading) { r.nowcast = m.aerisReading.nowcast; }
    var fill = colour(r.aqi_instant);
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
    m.aerisAqi = r.aqi_instant;
    var el = m.getElement && m.getElement();
    if (el) { el.setAttribute('data-sensor', r.id); }
    m.aerisReading = r;
    m.bindPopup(popup(r));
    m.bindTooltip(esc(r.sensor) + ' · AQI ' + (r.aqi_instant === null ? '–' : r.aqi_instant), { permanent: true, direction: 'right', offset: [10, 0] });
  }

  function fit() {
    var ids = Object.keys(markers);
    if (fitted || ids.length === 0) { return; }
    fitted = true;
    var pts = ids.map(function (id) { return markers[id].getLatLng(); });
    if (pts.length === 1) { map.setView(pts[0], 12); } else { map.fitBounds(L.latLngBounds(pts).pad(0.2)); }
  }

  function status(text) { document.getElementById('status').textContent = text; }

  // A read token, when the gateway asks for one: from `?token=` (then
  // taken out of the address bar, so it is not bookmarked or shared) or
  // typed into the panel, and kept in sessionStorage for this tab only.
  // Requests send it as `Authorization: Bearer`; the event stream, which
  // cannot set headers, as `?access_token=` (the API takes that on
  // /api/live only).
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
  function load() {
    api('api/sensors').then(function (list) {
      if (Array.isArray(list)) { list.forEach(show); }
      fit();
      status(Object.keys(markers).length + ' sensors');
    }).catch(function (e) { if (!asking()) { status('cannot load sensors: ' + e); } });
    loadDevices();
  }
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
      show(JSON.parse(ev.data));
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
