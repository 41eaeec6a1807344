import './base.css';
import './reviewkeys.css';
import './panel.css';
