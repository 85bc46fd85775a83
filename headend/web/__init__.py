"""HTTP: the JSON API, Prometheus metrics, health and the situation-room page. The only
package that knows HTTP (DESIGN.md section 2); it runs inside the store process."""
