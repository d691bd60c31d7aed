// Every page of the dashboard, in the order of the navigation bar. A page module calls
// `register` from ../app.js when imported.
import './fleet.js';
import './rollouts.js';
import './patches.js';
import './proxy.js';
import './config.js';
import './mirrors.js';
import './shadows.js';
